"""The base image: a Debian root filesystem made by debootstrap, imported once and reused.

No image registry is ever contacted. ``debootstrap --variant=minbase`` fetches Debian's own
packages from the mirror apt already uses on this machine, the tree is imported with
``podman import``, and the result is tagged by a key of its inputs, so it is built once per
(suite, mirror, architecture, package list) and found by that tag afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from baton.errors import BatonError
from baton.image.podman import (
    ImageBuildError,
    image_exists,
    podman_binary,
    podman_env,
    run_tool,
)

SUITE = "bookworm"
#: The base's interpreter: wheels built for the host's 3.11 install in it.
PYTHON = "3.11"
PACKAGES = ("python3", "ca-certificates")
_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Dropped from the tree: apt's package lists and caches, manuals, message catalogues (the
# engine speaks English), documentation but each package's licence (``copyright``): 44 MB.
_PRUNE = ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old",
          "usr/share/man", "usr/share/info", "usr/share/locale")


@dataclass(frozen=True)
class BaseImage:
    tag: str
    #: Seconds spent building it; 0.0 when it was found by its tag.
    build_seconds: float
    cached: bool


def debian_mirror(sources: tuple[Path, ...] = _SOURCES) -> str:
    """The first Debian archive (not the security one) that apt's sources name."""
    files = [p for s in sources if s.exists()
             for p in (sorted(s.iterdir()) if s.is_dir() else [s])]
    for path in files:
        for url in re.findall(r"(?m)^\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)",
                              path.read_text(errors="replace")):
            if "security" not in url:
                return str(url).rstrip("/")
    raise BatonError("no Debian mirror found in apt's sources (/etc/apt/sources.list*): "
                     "give one with --debian-mirror URL", code="DEBIAN_MIRROR_MISSING")


def base_tag(mirror: str, arch: str) -> str:
    """``localhost/baton/base:bookworm-<key>``, the key a digest of every input."""
    text = f"{SUITE}\nminbase\n{','.join(PACKAGES)}\n{mirror}\n{arch}\n{','.join(_PRUNE)}\n" \
        "docs: copyright only\n"
    return f"localhost/baton/base:{SUITE}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def ensure_base(work: Path, mirror: str | None = None) -> BaseImage:
    """The base image, built now if no image carries its tag yet (one builder at a time)."""
    mirror = mirror or debian_mirror()
    arch = run_tool(["dpkg", "--print-architecture"], what="dpkg").strip()
    tag = base_tag(mirror, arch)
    if image_exists(tag):
        return BaseImage(tag, 0.0, True)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(tag):
            return BaseImage(tag, 0.0, True)
        started = time.perf_counter()
        _build(work, tag, mirror)
        return BaseImage(tag, time.perf_counter() - started, False)


def _build(work: Path, tag: str, mirror: str) -> None:
    if shutil.which("debootstrap") is None:
        raise BatonError("debootstrap is not installed: the base image is built from "
                         "Debian's packages with it (apt-get install -y debootstrap)",
                         code="DEBOOTSTRAP_MISSING", details={"tool": "debootstrap"})
    tmp = Path(tempfile.mkdtemp(dir=work, prefix=".rootfs-"))
    try:
        run_tool(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                  SUITE, str(tmp), mirror], what="debootstrap")
        for rel in _PRUNE:
            target = tmp / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
                target.mkdir()
            elif target.exists():
                target.unlink()
        # os.walk never follows a link: an absolute one would point into this host.
        for root, _dirs, files in os.walk(tmp / "usr" / "share" / "doc"):
            for name in files:
                if name != "copyright":
                    os.unlink(os.path.join(root, name))
        # ``tar | podman import``: the tree's owners and modes are kept as they are.
        tar = subprocess.Popen(["tar", "-C", str(tmp), "--numeric-owner", "--one-file-system",
                                "-c", "."],
                               stdout=subprocess.PIPE)
        imported = subprocess.run(
            [podman_binary(), "import", "--message", f"debootstrap {SUITE} minbase",
             "-", tag], stdin=tar.stdout, capture_output=True, text=True, env=podman_env())
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ImageBuildError(f"importing the base image failed: {imported.stderr}",
                                  details={"output": imported.stderr})
    finally:
        _unmount_below(tmp)  # a debootstrap that failed may leave /proc or /sys mounted
        shutil.rmtree(tmp, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    """Unmount what is mounted under ``root``, deepest first, before it is removed."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
