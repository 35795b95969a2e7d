"""Defaults a bundle leaves open: how many workers (measured memory) and what timeout (the
bundle's check report), decided by a real engine; settings and the bundle still win."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from baton.bundle.loader import open_bundle
from baton.runtime.sizing import auto_worker_count
from baton.serving.defaults import default_timeout, derived_timeout
from tests.conftest import Server, run_baton
from tests.runtime.test_faults import wait_until

MB = 2**20
AUTO = {"BATON_WORKERS": "0"}  # the default: tests/conftest.py pins one worker otherwise


@pytest.mark.parametrize(("worker_mb", "available_mb", "cpus", "threads", "expected"), [
    (165, 20_000, 2, 1, 2),    # a small model on a roomy machine
    (165, 660, 2, 1, 2),       # exactly a quarter of what is available
    (165, 659, 2, 1, 1),       # a little less: the second would crowd the machine
    (6_000, 20_000, 16, 1, 1),  # a large model
    (165, 20_000, 1, 1, 1),    # one CPU: two workers would only take turns
    (165, 20_000, 4, 2, 2),    # two workers of two threads on four CPUs
    (165, 20_000, 3, 2, 1),    # ... but not on three
    (0, 20_000, 2, 1, 1),      # nothing measured: no second worker on a guess
])
def test_a_second_worker_starts_only_when_it_fits(worker_mb: int, available_mb: int,
                                                   cpus: int, threads: int,
                                                   expected: int) -> None:
    assert auto_worker_count(worker_mb * MB, available_mb * MB, cpus, threads) == expected


@pytest.mark.parametrize(("p99_ms", "max_batch_rows", "expected"), [
    (3.0, 256, 10.0),       # a fast model: the floor
    (800.0, 100, 10.0),     # 10 x 0.8 s is still the floor
    (2000.0, 100, 20.0),    # 10 x 2 s
    (2000.0, 256, 51.2),    # scaled to 256-row batches
    (2000.0, 50, 20.0),     # smaller batches never shrink it below 100 rows' worth
])
def test_the_timeout_derived_from_a_measured_latency(p99_ms: float, max_batch_rows: int,
                                                     expected: float) -> None:
    assert derived_timeout(p99_ms, max_batch_rows) == pytest.approx(expected)


def params(server: Server, model: str = "chaos") -> dict[str, Any]:
    return server.model(model)["parameters"]  # type: ignore[no-any-return]


def test_a_model_that_fits_gets_two_workers_by_default(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs a machine with at least 2 CPUs")
    server = serve([chaos_bundle], env=AUTO)
    wait_until(lambda: len(server.worker_pids("chaos")) == 2, 60, "a second ready worker")
    sizing = params(server)["sizing"]
    assert sizing["decided_by"] == "memory" and sizing["workers"] == 2
    assert sizing["worker_mb"] > 1 and sizing["available_mb"] >= 4 * sizing["worker_mb"]
    assert sizing["cpus"] == len(os.sched_getaffinity(0))
    assert params(server)["timeout"] == 30.0 and params(server)["timeout_from"] == "default"


def test_a_bundle_that_sets_its_workers_and_the_option_still_win(
        serve: Callable[..., Server], chaos_bundle: Path, tmp_path: Path) -> None:
    one = shutil.copytree(chaos_bundle, tmp_path / "one")
    manifest = one / "baton.toml"
    manifest.write_text(manifest.read_text().replace(
        "[contract]", "[serving]\nworkers = 1\ntimeout = 7.5\n\n[contract]", 1))
    server = serve([one], env=AUTO)
    assert params(server)["sizing"] == {"workers": 1, "decided_by": "setting"}
    assert len(params(server)["workers"]) == 1
    assert (params(server)["timeout"], params(server)["timeout_from"]) == (7.5, "setting")
    server = serve([chaos_bundle], "--workers", "3", "--timeout", "4", env=AUTO)
    wait_until(lambda: len(server.worker_pids("chaos")) == 3, 60, "three ready workers")
    assert params(server)["sizing"] == {"workers": 3, "decided_by": "setting"}
    assert params(server)["timeout"] == 4.0


def test_the_timeout_comes_from_the_bundles_check_report(
        serve: Callable[..., Server], tensor_bundle: Path, tmp_path: Path,
        baton_env: dict[str, str]) -> None:
    bundle = shutil.copytree(tensor_bundle, tmp_path / "checked")
    report = bundle / "check-report.json"  # not part of the bundle's content
    r = run_baton("check", bundle, "--iterations", "20", "--report", report, env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    p99 = json.loads(report.read_text())["measurements"]["latency"]["rows_100"]["p99_ms"]
    server = serve([bundle])
    assert params(server, "rowsum")["timeout"] == pytest.approx(derived_timeout(p99, 256))
    assert params(server, "rowsum")["timeout_from"] == f"check: p99 {p99:g} ms for 100 rows"

    # A report for other content (the model changed since) is not used.
    predict = bundle / "model" / "predict.py"
    predict.write_text(predict.read_text() + "\n# changed\n")
    server = serve([bundle])
    assert (params(server, "rowsum")["timeout"],
            params(server, "rowsum")["timeout_from"]) == (30.0, "default")


def test_a_check_report_given_by_the_registry_counts_only_for_its_own_content(
        tensor_bundle: Path, baton_home: Path) -> None:
    bundle = open_bundle(tensor_bundle, baton_home / "bundles")
    report = {"passed": True, "bundle": {"digest": bundle.digest},
              "measurements": {"latency": {"rows_100": {"p99_ms": 3000.0}}}}
    assert default_timeout(bundle, report) == (76.8, "check: p99 3000 ms for 100 rows")
    assert default_timeout(bundle, {**report, "passed": False}) == (30.0, "default")
    other = {**report, "bundle": {"digest": "sha256:" + "0" * 64}}
    assert default_timeout(bundle, other) == (30.0, "default")
    assert default_timeout(bundle, {"passed": True, "bundle": {"digest": bundle.digest},
                                    "measurements": {}}) == (30.0, "default")
