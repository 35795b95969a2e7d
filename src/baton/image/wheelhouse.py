"""The wheels an image installs from, prepared on the host and cached by what they hold.

Two wheelhouses, as docs/operations.md#air-gapped-installs describes them: the engine's (a
wheel of Baton itself plus its runtime dependencies, pinned to the versions this host runs)
and the model's (the bundle's locked requirements, keyed like its environment). Each is
collected once into a temporary folder and published by an atomic rename, so a failed
download never leaves a partial wheelhouse that a later build would trust. With an
operator's ``--wheelhouse`` nothing is downloaded: pip selects from that folder alone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baton import __version__
from baton.bundle.index import sha256_file
from baton.bundle.manifest import EnvironmentSpec
from baton.env.builder import lock_key, uv_binary
from baton.env.packages import installed
from baton.errors import BatonError
from baton.image.podman import run_tool

_SKIP_DIRS = {"__pycache__", ".mypy_cache"}


@dataclass(frozen=True)
class Wheelhouse:
    #: Folders of wheels; an install finds its packages in any of them.
    folders: tuple[Path, ...]
    #: A digest of what it holds, named in the build so a new one invalidates the layer.
    key: str
    cached: bool

    @property
    def wheels(self) -> list[Path]:
        return sorted(w for folder in self.folders for w in folder.glob("*.whl"))


def engine_wheelhouse(work: Path, source: Path | None = None,
                      wheelhouse: Path | None = None, offline: bool = False) -> Wheelhouse:
    """Baton's wheel (built from its checkout when its source changes, a few seconds; or
    taken from ``wheelhouse``) and its runtime dependencies at this host's versions
    (collected when those or Baton's requirements change: the slow part)."""
    own, own_key = _own_wheel(work, source, wheelhouse)
    pins = sorted(f"{p.name}=={p.version}" for p in installed(Path(sys.executable))
                  if p.name != "baton")
    wheel = next(own.glob("baton-*.whl"))
    requires = importlib.metadata.distribution("baton").requires or []
    deps_key = _digest([*requires, *pins, str(wheelhouse or "")])
    deps = work / f"engine-deps-{deps_key}"
    cached = deps.is_dir()

    def collect(tmp: Path) -> None:
        (tmp.parent / "constraints.txt").write_text("\n".join(pins) + "\n")
        _pip_download([str(wheel), "-c", str(tmp.parent / "constraints.txt")], tmp,
                      wheelhouse, offline)
        for copy in tmp.glob("baton-*.whl"):  # Baton's own wheel lives in ``own``
            copy.unlink()

    if not cached:
        _publish(work, deps, collect)
    return Wheelhouse((own, deps), _digest([own_key, deps_key]), cached)


def _own_wheel(work: Path, source: Path | None, wheelhouse: Path | None) -> tuple[Path, str]:
    """The folder holding Baton's one wheel, and its key."""
    shipped = sorted(wheelhouse.glob(f"baton-{__version__}-*.whl")) if wheelhouse else []
    if shipped:
        key = _digest([sha256_file(shipped[-1])])
    else:
        source = source or baton_source()
        key = _digest([__version__, source_digest(source)])
    own = work / f"baton-{key}"

    def build_wheel(tmp: Path) -> None:
        if shipped:
            shutil.copy2(shipped[-1], tmp / shipped[-1].name)
            return
        assert source is not None
        run_tool([uv_binary(), "build", "--wheel", "--quiet", "--out-dir", str(tmp), str(source)],
                 what="building Baton's wheel", env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})

    if not own.is_dir():
        _publish(work, own, build_wheel)
    return own, key


def model_wheelhouse(work: Path, spec: EnvironmentSpec,
                     wheelhouse: Path | None = None, offline: bool = False) -> Wheelhouse:
    """The wheels of the bundle's locked requirements (and anything they need)."""
    key = _digest([lock_key(spec), str(wheelhouse or "")])
    final = work / f"model-{key}"
    if final.is_dir():
        return Wheelhouse((final,), key, True)

    def collect(tmp: Path) -> None:
        if spec.requirements:
            (tmp.parent / "requirements.txt").write_text("\n".join(spec.requirements) + "\n")
            _pip_download(["-r", str(tmp.parent / "requirements.txt")], tmp, wheelhouse,
                          offline)

    _publish(work, final, collect)
    return Wheelhouse((final,), key, False)


def baton_source() -> Path:
    """The checkout Baton runs from (its ``pyproject.toml``), from which its wheel is built."""
    import baton

    root = Path(baton.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise BatonError("baton image builds Baton's wheel from its source, and this Baton "
                         f"was not installed from a checkout ({root} has no pyproject.toml)",
                         code="BATON_SOURCE_MISSING", details={"looked_in": str(root)})
    return root


def source_digest(root: Path) -> str:
    """A digest of the package's files (paths and contents) and the project's metadata."""
    h = hashlib.sha256((root / "pyproject.toml").read_bytes())
    for dirpath, dirs, files in sorted(os.walk(root / "src" / "baton")):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            path = Path(dirpath, name)
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _pip_download(args: list[str], dest: Path, wheelhouse: Path | None,
                  offline: bool) -> None:
    if offline and wheelhouse is None:
        raise BatonError("--offline needs --wheelhouse DIR: the image's wheels are not in "
                         "Baton's cache yet and no index may be reached",
                         code="WHEELHOUSE_REQUIRED", details={"needs": args})
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), *args]
    if wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    run_tool(cmd, what="collecting wheels (pip download)")


def _publish(work: Path, final: Path, collect: Callable[[Path], None]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=work, prefix=".wheels-"))
    try:
        (tmp / "wheels").mkdir()
        collect(tmp / "wheels")
        if not final.exists():
            os.replace(tmp / "wheels", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
