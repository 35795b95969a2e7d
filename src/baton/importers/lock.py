"""A complete lock of exact pins from MLflow's top-level requirements, resolved by uv.

MLflow's ``requirements.txt`` pins only the packages the model names (and ``mlflow``);
a bundle's environment holds exact pins of everything. ``uv pip compile`` resolves them for
the Python version MLflow recorded, which this machine must have: the environment is built
with it, and a lock resolved for another version could pick other wheels.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from baton.env.builder import uv_binary
from baton.env.packages import normalise
from baton.errors import BundleError

#: The distributions that are MLflow itself.
MLFLOW = frozenset({"mlflow", "mlflow-skinny"})


def name_of(pin: str) -> str:
    return normalise(re.split(r"[\s\[=<>!~;]", pin, maxsplit=1)[0])


def find_python(version: str, where: str) -> Path:
    """The interpreter of ``version`` (``3.11``) on this machine; refuses clearly if none."""
    proc = _uv(["python", "find", "--no-project", version])
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BundleError(
            f"the model was saved with Python {version} ({where}) and this machine has no "
            f"Python {version}: install it (uv python install {version}, or the system's "
            "package) and import again; its requirements are locked for that version only",
            code="PYTHON_UNAVAILABLE", details={"python": version, "field": where})
    return Path(proc.stdout.strip().splitlines()[-1])


def lock(requirements: list[str], python: str, *, source: str, offline: bool = False,
         wheelhouse: Path | None = None) -> list[str]:
    """Exact ``name==version`` pins of ``requirements`` and everything they need."""
    with tempfile.TemporaryDirectory(prefix="baton-lock-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(requirements) + "\n")
        args = ["pip", "compile", str(req), "--python-version", python, "--no-config",
                "--no-header", "--no-annotate", "--quiet"]
        if wheelhouse is not None:
            args += ["--no-index", "--find-links", str(wheelhouse)]
        if offline or wheelhouse is not None:
            args += ["--offline"]
        proc = _uv(args)
    if proc.returncode != 0:
        reason = " ".join(line.strip(" ×╰─▶│├") for line in proc.stderr.splitlines()
                          if line.strip())
        raise BundleError(f"the requirements in {source} cannot be resolved for Python "
                          f"{python}: {reason}", code="MLFLOW_UNRESOLVABLE",
                          details={"file": source, "requirements": requirements,
                                   "output": proc.stderr.strip()})
    pins = []
    for line in proc.stdout.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins.append(line)
    unpinned = [p for p in pins if "==" not in p]
    if unpinned:
        raise BundleError(f"uv resolved {', '.join(unpinned)} from {source} without an exact "
                          "version (a URL or a path?): a bundle needs name==version pins",
                          code="MLFLOW_UNRESOLVABLE", details={"file": source,
                                                               "unpinned": unpinned})
    return sorted(pins, key=name_of)


def _uv(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([uv_binary(), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=600)
