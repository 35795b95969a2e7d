"""``baton image``: a bundle's OCI image, built by podman from local parts only.

Everything the build needs is made on this host first — the Debian base (``base``), the
engine's and the model's wheelhouses (``wheelhouse``) — and handed to ``podman build`` in a
private context with ``--pull=never --network none``: no registry and no index is reached
from inside the build, which is what an air-gapped build farm needs too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from baton import __version__
from baton.bundle.index import list_files
from baton.bundle.loader import Bundle
from baton.env.builder import uv_binary
from baton.errors import BatonError
from baton.image.base import PYTHON, BaseImage, ensure_base
from baton.image.containerfile import Layers, render
from baton.image.podman import podman
from baton.image.source import open_source
from baton.image.wheelhouse import Wheelhouse, engine_wheelhouse, model_wheelhouse
from baton.settings import Settings

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    bundle: Bundle
    base: BaseImage
    labels: dict[str, str]
    #: Build steps after FROM, and how many of them podman took from its cache.
    steps: int
    cached_steps: int
    #: Seconds ``podman build`` took (the base and the wheelhouses are not counted).
    build_seconds: float
    #: Seconds for everything: base, wheelhouses and build.
    total_seconds: float
    size_bytes: int

    @property
    def fully_cached(self) -> bool:
        return self.steps > 0 and self.cached_steps == self.steps


def default_tag(bundle: Bundle) -> str:
    """``localhost/baton/<name>:<version>`` (characters a tag cannot hold become ``-``)."""
    name = _TAG_UNSAFE.sub("-", bundle.name.lower()).strip("-.") or "bundle"
    return f"localhost/baton/{name}:{_TAG_UNSAFE.sub('-', bundle.version)[:128]}"


def build_image(ref: str, settings: Settings, *, tag: str | None = None,
                registry: str | None = None, debian_mirror: str | None = None,
                source: Path | None = None) -> BuiltImage:
    """Build the image of ``ref`` (folder, archive or ``NAME@VERSION``) and tag it; the
    engine from the checkout at ``source`` (default: the one running)."""
    started = time.perf_counter()
    opened = open_source(ref, settings, registry)
    bundle, spec = opened.bundle, opened.bundle.manifest.environment
    if spec.r:
        raise BatonError(f"{bundle.name} {bundle.version} is an R model: images hold Python "
                         "models only so far; serve it with `baton serve` on a machine with "
                         "R (docs/manifest.md)", code="RUNNER_UNSUPPORTED",
                         details={"field": "model.runner", "runner": "r"})
    if spec.python != PYTHON:
        raise BatonError(f"{bundle.name} {bundle.version} needs Python {spec.python}; the "
                         f"image's Debian base has Python {PYTHON}", code="PYTHON_MISMATCH",
                         details={"bundle": spec.python, "image": PYTHON})
    if bundle.manifest.isolation.sandboxed:
        raise BatonError(f"{bundle.name} {bundle.version} asks for isolation level 'sandbox', "
                         "which cannot run inside the image's container (no bubblewrap, no "
                         "capabilities to create namespaces): the container is the isolation "
                         "there; see docs/isolation.md", code="SANDBOX_UNAVAILABLE",
                         details={"field": "isolation.level"})
    work = settings.home / "image"
    base = ensure_base(work, debian_mirror)
    engine = engine_wheelhouse(work / "wheels", source, wheelhouse=settings.wheelhouse,
                               offline=settings.offline)
    model = model_wheelhouse(work / "wheels", spec, settings.wheelhouse, settings.offline)
    tag = tag or default_tag(bundle)
    labels = image_labels(bundle, base.tag, opened.label)
    layers = Layers(base.tag, engine.key, __version__, PYTHON, model.key, labels)
    with tempfile.TemporaryDirectory(dir=work, prefix=".context-") as tmp:
        context = Path(tmp)
        _context(context, bundle, engine, model)
        (context / "Containerfile").write_text(render(layers))
        build_started = time.perf_counter()
        output = podman(["build", "--format", "docker", "--pull=never", "--network", "none",
                         "--layers", "--tag", tag, "--file", str(context / "Containerfile"),
                         str(context)], what="podman build")
        build_seconds = time.perf_counter() - build_started
    steps = len(re.findall(r"(?m)^STEP \d+/\d+: ", output)) - 1
    cached = len(re.findall(r"(?m)^--> Using cache ", output))
    info = json.loads(podman(["image", "inspect", tag], what="podman image inspect"))[0]
    return BuiltImage(tag, info["Id"], bundle, base, labels, steps, cached, build_seconds,
                      time.perf_counter() - started, int(info.get("Size", 0)))


def image_labels(bundle: Bundle, base: str, source: str) -> dict[str, str]:
    """OCI's keys where they fit, Baton's for the rest. No timestamp: an unchanged bundle
    must give unchanged labels, or the last layer would never come from the cache."""
    labels = {
        "org.opencontainers.image.title": bundle.name,
        "org.opencontainers.image.version": bundle.version,
        "org.opencontainers.image.description": bundle.manifest.description,
        "org.opencontainers.image.authors": bundle.manifest.owner,
        "org.opencontainers.image.base.name": base,
        "io.baton.bundle.name": bundle.name,
        "io.baton.bundle.version": bundle.version,
        "io.baton.bundle.digest": bundle.digest,
        "io.baton.version": __version__,
        "io.baton.image.source": source,
    }
    return {k: v for k, v in labels.items() if v}


def save_archive(tag: str, target: Path) -> None:
    """The image as an OCI archive (``podman load -i FILE`` on the air-gapped side)."""
    target.unlink(missing_ok=True)  # podman save refuses to overwrite
    podman(["save", "--format", "oci-archive", "--output", str(target), tag],
           what="podman save")


def _context(context: Path, bundle: Bundle, engine: Wheelhouse, model: Wheelhouse) -> None:
    _link(Path(uv_binary()), context / "engine" / "uv")
    for wheel in engine.wheels:
        _link(wheel, context / "engine" / "wheels" / wheel.name)
    (context / "model" / "wheels").mkdir(parents=True)
    for wheel in model.wheels:
        _link(wheel, context / "model" / "wheels" / wheel.name)
    env = bundle.manifest.environment
    (context / "model" / "environment.json").write_text(json.dumps(
        {"python": env.python, "requirements": list(env.requirements)}))
    for rel in list_files(bundle.path):  # exactly what the digest covers
        src, dst = bundle.path / rel, context / "bundle" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)


def _link(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (no copy of large wheels), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
