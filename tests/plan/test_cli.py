"""`baton plan` on a check report: the text, --json, -o values, refusals as exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from baton.cli.main import main
from baton.serving.opening import open_local
from baton.settings import Settings
from tests.conftest import EXAMPLE, run_baton


def report_for(digest: str, t1: float = 2.0, t100: float = 3.98,
               p99_1: float = 3.0) -> dict[str, Any]:
    """A passed check report of the example bundle with chosen latencies."""
    return {"bundle": {"name": "penguins", "version": "1.0.0", "digest": digest},
            "passed": True,
            "measurements": {"load_seconds": 2.5,
                             "memory_mb": {"worker_rss_mb": 150.0, "worker_peak_rss_mb": 160.0},
                             "latency": {"rows_1": {"p50_ms": t1, "p99_ms": p99_1},
                                         "rows_100": {"p50_ms": t100, "p99_ms": t100 * 1.5}}}}


@pytest.fixture(scope="module")
def digest() -> str:
    return open_local(EXAMPLE, Settings.from_env()).digest


@pytest.fixture
def check_file(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "check-report.json"
    path.write_text(json.dumps(report_for(digest)))
    return path


def plan(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["plan", str(EXAMPLE), *map(str, args)],
                              prog_name="baton", catch_exceptions=False)


def test_prints_the_recommendation_and_its_reasoning(check_file: Path) -> None:
    r = plan("--check-report", check_file, "--rps", "500", "--p99", "50ms",
             "--front-us-per-request", "100")
    assert r.exit_code == 0, r.output
    assert "penguins 1.0.0: 500 req/s of 1 row(s) at p99 <= 50 ms" in r.output
    assert "workers per replica  1" in r.output
    # memory: 128 Mi front + 160 MB peak x 1.5 (deploy/sizing.py)
    assert "per replica          cpu 750m (limit 1500m), memory 368Mi" in r.output
    # t(b) = 2 + (3.98 - 2) / 99 (b - 1) from the report's medians
    assert "model: t(b) = 2 + 0.0200 (b - 1) ms" in r.output
    assert "front: 100 us/request + 1.5 us/row (given on the command line)" in r.output
    assert f"deploy: baton deploy kubernetes {EXAMPLE} --workers 1" in r.output


def test_json_and_the_values_file_agree(check_file: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    r = plan("--check-report", check_file, "--rps", "500", "--p99", "50", "--rows", "10",
             "--node-cpus", "4", "--node-memory", "4096", "--json", "-o", values)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["target"] == {"rps": 500, "rows": 10, "p99_ms": 50}
    assert out["values"] == json.loads(values.read_text())
    assert out["front"]["source"].startswith("bench/README.md")
    assert out["model"]["k_ms"] == pytest.approx(0.02)
    assert out["prediction"]["p99_ms"] <= 50


def test_refusals_exit_2_with_their_code(check_file: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["plan", str(EXAMPLE), "--check-report", str(check_file),
                                  "--rps", "100", "--p99", "2"], prog_name="baton")
    assert r.exit_code == 2
    assert "error [P99_BELOW_MODEL]: a p99 of 2 ms is below the model's own p99" in r.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps(report_for("sha256:" + "1" * 64)))
    r = CliRunner().invoke(main, ["plan", str(EXAMPLE), "--check-report", str(other),
                                  "--rps", "100", "--p99", "50"], prog_name="baton")
    assert r.exit_code == 2 and "[CHECK_REPORT_MISMATCH]" in r.output
    r = CliRunner().invoke(main, ["plan", str(EXAMPLE), "--check-report", str(check_file),
                                  "--rps", "100", "--p99", "fast"], prog_name="baton")
    assert r.exit_code == 2 and "'fast' is not a number of milliseconds" in r.output


def test_the_real_command_on_the_examples_check(baton_env: dict[str, str],
                                                tmp_path: Path) -> None:
    report = tmp_path / "check-report.json"
    r = run_baton("check", EXAMPLE, "--report", report, "--iterations", "20", env=baton_env,
                  timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_baton("plan", EXAMPLE, "--check-report", report, "--rps", "200", "--p99", "500",
                  "--json", env=baton_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    m = json.loads(report.read_text())["measurements"]["latency"]
    assert out["model"]["t1_ms"] == m["rows_1"]["p50_ms"]
    assert out["values"]["workers"] >= 1 and out["prediction"]["p99_ms"] <= 500
