#!/usr/bin/env bash
# Debian packages the tests use, installed when missing (CI runs as root on Debian 12).
set -euo pipefail

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
# Container images (`baton image`): podman with runc, and debootstrap for the local base.
command -v podman >/dev/null || missing+=(podman buildah runc fuse-overlayfs slirp4netns uidmap)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# The `sandbox` isolation level of model workers.
command -v bwrap >/dev/null || missing+=(bubblewrap)
# R models (`runner = "r"`): R itself, the R package the example pins (randomForest), and
# jsonlite, a system package the tests prove an R model cannot see (CRAN is out of reach:
# R packages come from Debian's r-cran-*).
command -v Rscript >/dev/null || missing+=(r-base-core)
for pkg in jsonlite randomforest; do
  dpkg-query -W -f='${Status}' "r-cran-$pkg" 2>/dev/null | grep -q "ok installed" \
    || missing+=("r-cran-$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
