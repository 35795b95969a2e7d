"""Helpers of the `baton` command's tests: a scaffolded bundle, a check with its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_baton


@pytest.fixture
def scaffolded(tmp_path: Path, baton_env: dict[str, str]) -> Path:
    result = run_baton("init", tmp_path / "demo", env=baton_env)
    assert result.returncode == 0, result.stderr
    assert "created bundle" in result.stdout
    return tmp_path / "demo"


def check(bundle: Path, env: dict[str, str]) -> tuple[int, dict, str]:
    code, report, stdout, stderr = check_streams(bundle, env)
    return code, report, stdout + stderr


def check_streams(bundle: Path, env: dict[str, str]) -> tuple[int, dict, str, str]:
    """`baton check` with its exit code, JSON report, standard output and standard error."""
    report = bundle.parent / "report.json"
    r = run_baton("check", bundle, "--report", report, "--iterations", "5", env=env)
    assert report.exists(), f"no report written (exit {r.returncode}):\n{r.stdout}{r.stderr}"
    return r.returncode, json.loads(report.read_text()), r.stdout, r.stderr


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
