"""Real environments, built by uv into a per-test Baton home (the uv cache stays shared)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from baton.env.builder import EnvBuilder, Environment

#: The interpreter version these tests build environments for: the one running them.
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def envs_dir(tmp_path: Path) -> Path:
    return tmp_path / "baton-home" / "envs"


@pytest.fixture
def builder(envs_dir: Path) -> EnvBuilder:
    return EnvBuilder(envs_dir)


def run_python(env: Environment, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the environment's interpreter, as a worker would start it."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env.python), "-c", code], capture_output=True, text=True,
                          env=clean, stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the six 1.16.0 wheel, downloaded with pip."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "download", "six==1.16.0", "--no-deps",
                    "--only-binary", ":all:", "--quiet", "-d", str(folder)],
                   check=True, capture_output=True, timeout=300)
    return folder

