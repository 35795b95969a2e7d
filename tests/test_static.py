"""``make lint`` inside the suite: ruff and a strict mypy over src/ (pyproject's [tool.mypy]).

CI runs ``make test`` only, so a type error or a lint finding fails CI through this test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    res = _run(str(BIN / "ruff"), "check", "src", "tests", "bench", "examples")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_on_src_finds_nothing() -> None:
    res = _run(str(BIN / "mypy"))
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "Success: no issues found" in res.stdout
