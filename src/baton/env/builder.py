"""Isolated environments, built with uv from a bundle's lock and cached by the lock's digest.

Bundles whose locks are identical share one environment. An environment is built in a
temporary folder and published by an atomic rename, so a failed or interrupted build never
leaves a half-built environment behind. Baton's own dependencies never enter it: it holds
exactly the bundle's pinned requirements.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from baton.bundle.manifest import EnvironmentSpec
from baton.env.packages import normalise
from baton.errors import EnvironmentBuildError

_READY = ".baton-ready"
_NAME_OF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Environment:
    path: Path
    key: str
    #: Seconds spent building; 0.0 when it came from the cache.
    build_seconds: float
    cached: bool
    #: ``python`` (a virtual environment) or ``r`` (an R library: :mod:`baton.env.r`).
    language: str = "python"
    #: The program that runs the runner, when it is not the environment's own Python.
    program: Path | None = None
    #: Variables a worker of this environment starts with (R's library path).
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def interpreter(self) -> Path:
        """What a worker's runner is run with: the environment's Python, or R's Rscript."""
        return self.program or self.python


def lock_key(spec: EnvironmentSpec) -> str:
    """The cache key: a digest of the Python version and the normalised, sorted pins."""
    norm = sorted(_normalise(r) for r in spec.requirements)
    text = f"python={spec.python}\n" + "\n".join(norm)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _normalise(pin: str) -> str:
    """``Foo_Bar.baz == 1.0`` and ``foo-bar-baz==1.0`` name the same thing (PEP 503)."""
    pin = re.sub(r"\s+", "", pin)
    name, sep, rest = pin.partition("==")
    return normalise(name) + sep + rest


def publish(built: Path, final: Path, spec: EnvironmentSpec) -> None:
    """Mark the environment built at ``built`` ready and make it ``final`` by one rename."""
    (built / _READY).write_text("\n".join(spec.requirements) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(built, final)


def uv_binary() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


class EnvBuilder:
    """Builds and caches environments under ``envs_dir``."""

    def __init__(self, envs_dir: Path, *, wheelhouse: Path | None = None,
                 offline: bool = False, r_packages: Path | None = None) -> None:
        self.envs_dir = Path(envs_dir)
        self.wheelhouse = wheelhouse
        self.offline = offline
        self.r_packages = r_packages

    def path_for(self, spec: EnvironmentSpec) -> Path:
        return self.envs_dir / lock_key(spec)

    def ensure(self, spec: EnvironmentSpec) -> Environment:
        """Return the environment for ``spec``, building it if the cache lacks it."""
        if spec.r:
            from baton.env.r import RLibraryBuilder

            return RLibraryBuilder(self.envs_dir, self.r_packages).ensure(spec)
        key = lock_key(spec)
        final = self.envs_dir / key
        if (final / _READY).exists():
            return Environment(final, key, 0.0, True)
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.envs_dir / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key, across processes
            if (final / _READY).exists():
                return Environment(final, key, 0.0, True)
            started = time.perf_counter()
            self._build(spec, final)
            return Environment(final, key, time.perf_counter() - started, False)

    def _build(self, spec: EnvironmentSpec, final: Path) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.envs_dir, prefix=".build-"))
        try:
            self._run(["venv", "--relocatable", "--no-project", "--python", spec.python,
                       "--quiet", str(tmp / "env")], spec, stage="interpreter")
            if spec.requirements:
                req = tmp / "requirements.txt"
                req.write_text("\n".join(spec.requirements) + "\n")
                cmd = ["pip", "install", "--python", str(tmp / "env" / "bin" / "python"),
                       "--no-config", "--quiet", "--compile-bytecode", "-r", str(req)]
                if self.wheelhouse is not None:
                    cmd += ["--no-index", "--find-links", str(self.wheelhouse)]
                if self.offline or self.wheelhouse is not None:
                    cmd += ["--offline"]
                self._run(cmd, spec, stage="dependency_resolution")
            publish(tmp / "env", final, spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, args: list[str], spec: EnvironmentSpec, *, stage: str) -> None:
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run([uv_binary(), *args], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise _build_error(proc.stderr or proc.stdout, spec, stage)


def _clean(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^[\s×╰─▶│├]+", "", line).strip()
        if line:
            lines.append(line)
    return lines


def _build_error(output: str, spec: EnvironmentSpec, stage: str) -> EnvironmentBuildError:
    lines = _clean(output)
    text = " ".join(lines)
    if stage == "interpreter":
        return EnvironmentBuildError(
            f"no Python {spec.python} interpreter is available on this machine "
            f"(this machine runs Python {sys.version_info.major}.{sys.version_info.minor}); "
            f"uv said: {text}",
            details={"stage": stage, "failures": [{"requirement": f"python {spec.python}",
                                                   "reason": text}], "output": output})
    failures = []
    for req in spec.requirements:
        m = _NAME_OF.match(req)
        name = m.group(1) if m else req
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.I)
        hits = [ln for ln in lines if pattern.search(ln)]
        if hits:
            failures.append({"requirement": req, "reason": " ".join(hits)})
    if not failures:
        failures = [{"requirement": "(environment)", "reason": text or "uv failed"}]
    listing = "; ".join(f"{f['requirement']}" for f in failures)
    return EnvironmentBuildError(
        f"dependencies could not be resolved or installed: {listing}",
        details={"stage": stage, "failures": failures, "output": output.strip()})
