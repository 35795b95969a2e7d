"""Where the manifests' figures come from: a bundle's identity, its check report, an image.

Every figure the manifests use is a :class:`Figure`: a value and the place it came from
(``check-report.json: measurements.load_seconds``, ``podman image inspect: Config.User``,
``default``), so the manifests can say in annotations where each number was read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from baton.errors import BatonError

if TYPE_CHECKING:
    from baton.bundle.loader import Bundle
    from baton.settings import Settings

#: The labels a Baton image carries (src/baton/image/build.py): Baton's, then OCI's.
NAME_LABELS = ("io.baton.bundle.name", "org.opencontainers.image.title")
VERSION_LABELS = ("io.baton.bundle.version", "org.opencontainers.image.version")
DIGEST_LABELS = ("io.baton.bundle.digest",)


class DeployError(BatonError):
    """The input to ``baton deploy`` cannot make manifests: no image, a check report of
    another bundle, a failed check."""

    code = "INVALID_DEPLOY_INPUT"
    http_status = 400
    exit_code = 2


class Figure(NamedTuple):
    value: float
    source: str


@dataclass(frozen=True)
class Identity:
    """What is deployed: the bundle's name, version and content digest."""

    name: str
    version: str
    digest: str
    source: str

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> Identity:
        return cls(bundle.name, bundle.version, bundle.digest,
                   "the bundle's baton.toml and content digest")


@dataclass(frozen=True)
class ImageInfo:
    """What ``podman image inspect`` says of an image that the manifests need."""

    ref: str
    image_id: str = ""
    user: str = ""
    volumes: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def identity(self) -> Identity:
        def first(keys: tuple[str, ...]) -> str:
            return next((self.labels[k] for k in keys if self.labels.get(k)), "")

        name, version, digest = first(NAME_LABELS), first(VERSION_LABELS), first(DIGEST_LABELS)
        if not (name and version and digest):
            raise DeployError(
                f"image {self.ref} is not a Baton image: its labels name no bundle "
                f"(expected {NAME_LABELS[0]}, {VERSION_LABELS[0]} and {DIGEST_LABELS[0]}); "
                "build it with 'baton image BUNDLE'",
                code="NOT_A_BATON_IMAGE", details={"image": self.ref})
        return Identity(name, version, digest, f"podman image inspect {self.ref}: labels")


def inspect_image(ref: str) -> ImageInfo:
    """The local image ``ref`` (podman's store); :class:`DeployError` ``IMAGE_NOT_FOUND``
    when there is none."""
    from baton.image.podman import image_exists, podman

    if not image_exists(ref):
        raise DeployError(f"no image {ref} in podman's local store: build it with "
                          "'baton image BUNDLE', or name the image IT pulls with --image REF",
                          code="IMAGE_NOT_FOUND", details={"image": ref})
    [data] = json.loads(podman(["image", "inspect", ref], what=f"inspecting {ref}"))
    config = data.get("Config") or {}
    labels = {**(data.get("Annotations") or {}), **(config.get("Labels") or {}),
              **(data.get("Labels") or {})}
    ports = sorted(int(p.split("/")[0]) for p in (config.get("ExposedPorts") or {}))
    return ImageInfo(ref=ref, image_id=str(data.get("Id", "")), user=str(config.get("User", "")),
                     volumes=tuple(sorted(config.get("Volumes") or {})), ports=tuple(ports),
                     labels={str(k): str(v) for k, v in labels.items()})


@dataclass(frozen=True)
class CheckFigures:
    """The figures of a passed ``baton check`` that size a deployment."""

    load_seconds: Figure
    worker_memory_mb: Figure
    latency_p99_ms: Figure
    report: str

    @classmethod
    def from_report(cls, data: dict[str, Any], where: str, identity: Identity) -> CheckFigures:
        """Figures of ``data`` (a check report read from ``where``), refused unless it is a
        passed check of ``identity``'s digest."""
        bundle = data.get("bundle") if isinstance(data, dict) else None
        if not isinstance(bundle, dict) or "measurements" not in data:
            raise DeployError(f"{where} is not a 'baton check' report (no bundle or "
                              "measurements)", code="INVALID_CHECK_REPORT",
                              details={"report": where})
        if bundle.get("digest") != identity.digest:
            raise DeployError(
                f"{where} is the check of {bundle.get('name')} {bundle.get('version')} "
                f"({bundle.get('digest')}), not of {identity.name} {identity.version} "
                f"({identity.digest}): run 'baton check' on the bundle you deploy",
                code="CHECK_REPORT_MISMATCH",
                details={"report_digest": bundle.get("digest"), "digest": identity.digest})
        if not data.get("passed"):
            raise DeployError(f"{where}: the check failed at stage "
                              f"{data.get('failed_stage')!r}; deploy only a bundle that passes",
                              code="CHECK_FAILED", details={"report": where})
        m = data["measurements"]
        memory = m.get("memory_mb") or {}
        peak = memory.get("worker_peak_rss_mb") or memory.get("worker_rss_mb")
        p99 = ((m.get("latency") or {}).get("rows_100") or {}).get("p99_ms")
        if m.get("load_seconds") is None or peak is None or p99 is None:
            raise DeployError(f"{where} lacks measurements (load_seconds, memory_mb, "
                              "latency): run 'baton check' again with a Baton that records them",
                              code="INVALID_CHECK_REPORT", details={"report": where})
        return cls(Figure(float(m["load_seconds"]), f"{where}: measurements.load_seconds"),
                   Figure(float(peak), f"{where}: measurements.memory_mb.worker_peak_rss_mb"),
                   Figure(float(p99), f"{where}: measurements.latency.rows_100.p99_ms"),
                   where)


def check_data(ref: str, report: Path | None, settings: Settings) -> tuple[dict[str, Any], str]:
    """The check report of the bundle at ``ref`` and where it came from: the file
    ``report`` when given, else a ``baton check`` run now (refused when it fails)."""
    if report is not None:
        return read_report_data(report), report.name
    from baton.check import run_check

    result = run_check(ref, settings)
    if not result.passed:
        raise DeployError(f"baton check failed at stage {result.failed_stage!r}: "
                          f"{result.message}", code="CHECK_FAILED")
    return result.to_dict(), f"baton check {Path(ref).name}"


def read_report_data(path: Path) -> dict[str, Any]:
    """A check report file's JSON object, or ``INVALID_CHECK_REPORT`` saying why not."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the check report {path}: {exc}",
                          code="INVALID_CHECK_REPORT", details={"report": str(path)}) from None
    if not isinstance(data, dict):
        raise DeployError(f"{path.name} is not a 'baton check' report",
                          code="INVALID_CHECK_REPORT", details={"report": str(path)})
    return data
