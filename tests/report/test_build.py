"""``baton report`` on the example bundle: every section present and derived from what was
measured (the real check, the model's environment, the bundle's files), not constants."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from baton.bundle.archive import bundle_digest
from baton.bundle.manifest import BundleManifest
from baton.env.builder import EnvBuilder
from baton.env.packages import installed
from baton.settings import Settings
from tests.conftest import EXAMPLE, run_baton

from .conftest import Written

pytestmark = pytest.mark.slow  # the real check and a measured model, once a session

CHECK_STAGES = ["manifest", "dependency_resolution", "import", "load", "input_contract",
                "model", "output_contract", "sample_mismatch", "single_records",
                "null_record", "latency"]


def test_identity_and_contract_are_the_bundles(example_report: Written) -> None:
    r = example_report.data
    manifest = BundleManifest.load(EXAMPLE)
    assert r["identity"]["digest"] == bundle_digest(EXAMPLE)
    assert (r["identity"]["name"], r["identity"]["version"]) == ("penguins", "1.0.0")
    assert r["identity"]["isolation"]["summary"] == "process"  # the example asks for none
    assert r["contract"] == manifest.contract.to_dict()
    assert r["summary"].startswith(f"penguins@1.0.0 {bundle_digest(EXAMPLE)[:19]}")
    assert example_report.stdout.splitlines()[0] == r["summary"]


def test_the_check_section_is_the_check_that_ran(example_report: Written) -> None:
    check = example_report.data["check"]
    assert check["passed"] is True and check["failed_stage"] is None
    assert [s["stage"] for s in check["stages"]] == CHECK_STAGES
    assert all(s["seconds"] > 0 for s in check["stages"] if s["stage"] in ("import", "load"))
    assert check["measurements"]["load_seconds"] > 0
    assert check["measurements"]["latency"]["rows_1"]["calls"] == 50  # the report's own run


def test_throughput_grid_memory_and_resources_are_measured(example_report: Written) -> None:
    r = example_report.data
    grid = r["performance"]["grid"]
    assert [(c["rows"], c["concurrency"]) for c in grid] == [
        (n, c) for n in (1, 10, 100) for c in (1, 4, 16)]
    for c in grid:
        assert c["requests"] >= 1 and c["p99_ms"] >= c["p50_ms"] > 0
        # the figure is the count over the time (both rounded in the JSON)
        assert c["rows_per_s"] == pytest.approx(c["requests"] * c["rows"] / c["seconds"],
                                                rel=0.01)
    [worker] = r["performance"]["memory"]
    assert worker["peak_rss_mb"] >= worker["rss_mb"] > 20  # a real Python with scikit-learn
    assert r["resources"]["measured_peak_worker_mb"] == worker["peak_rss_mb"]


def test_resources_are_what_the_manifests_request(example_report: Written, tmp_path: Path,
                                                  baton_env: dict[str, str]) -> None:
    """The approver reads the figures 'baton deploy kubernetes' writes, from the same check."""
    r = example_report.data
    check = dict(r["check"], bundle={"name": "penguins", "version": "1.0.0",
                                     "digest": r["identity"]["digest"]})
    (tmp_path / "check.json").write_text(json.dumps(check))
    d = run_baton("deploy", "kubernetes", EXAMPLE, "--check-report", tmp_path / "check.json",
                  "--image", "registry.example.com/ml/penguins:1.0.0", "-o", tmp_path / "k8s",
                  env=baton_env)
    assert d.returncode == 0, (d.stdout, d.stderr)
    deployment = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    res = r["resources"]
    assert {"requests": res["requests"], "limits": res["limits"]} == container["resources"]
    peak = r["check"]["measurements"]["memory_mb"]["worker_peak_rss_mb"]
    assert res["requests"]["memory"] == f"{_up16(128 + _up16(peak * 1.5))}Mi"


def _up16(mb: float) -> int:
    return int(math.ceil(mb / 16) * 16)


def test_dependencies_and_sbom_come_from_the_models_environment(
        example_report: Written, baton_env: dict[str, str]) -> None:
    r = example_report.data
    manifest = BundleManifest.load(EXAMPLE)
    envs = Settings(home=Path(baton_env["BATON_HOME"])).envs_dir
    env = EnvBuilder(envs).ensure(manifest.environment)  # cached by the report's run
    packages = installed(env.python)
    assert r["sbom"]["count"] == len(packages) > 0
    assert {c["purl"] for c in r["sbom"]["components"]} == {p.purl for p in packages}
    pins = {p["name"]: p for p in r["dependencies"]["packages"] if p["pinned"]}
    assert len(pins) == len(manifest.environment.requirements)
    assert pins["scikit-learn"]["pinned"] == pins["scikit-learn"]["installed"]
    assert r["dependencies"]["differences"] == []  # uv installed exactly the pins
    assert r["dependencies"]["python"]["environment"].startswith("3.11")


def test_quality_and_drift_reference_come_from_the_bundles_files(
        example_report: Written) -> None:
    r = example_report.data
    expected = json.loads((EXAMPLE / "samples" / "expected.json").read_text())
    q = r["quality"]
    assert q["rows"] == len(expected) and q["differences"] == 0
    assert [f["field"] for f in q["fields"]] == list(expected[0])
    label = q["fields"][0]
    assert label["agreement"] == 1.0
    assert label["distribution"] == {c: sum(e["prediction"] == c for e in expected)
                                     for c in label["distribution"]}
    profile = json.loads((EXAMPLE / "monitoring" / "reference.json").read_text())
    drift = r["drift_reference"]
    assert set(drift["features"]) == set(profile["features"])
    assert drift["features"]["island"]["proportions"] == \
        profile["features"]["island"]["proportions"]


def test_a_failing_bundle_gets_its_report_and_the_checks_exit_status(
        tmp_path: Path, baton_env: dict[str, str]) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(EXAMPLE, bundle)
    expected = json.loads((bundle / "samples" / "expected.json").read_text())
    expected[0]["prediction"] = "Gentoo" if expected[0]["prediction"] != "Gentoo" else "Adelie"
    (bundle / "samples" / "expected.json").write_text(json.dumps(expected))
    r = run_baton("report", bundle, "--output", tmp_path / "out", env=baton_env, timeout=900)
    assert r.returncode == 3, (r.stdout, r.stderr)  # sample_mismatch's exit code
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["check"]["failed_stage"] == "sample_mismatch"
    assert data["performance"] is None and "check FAILED at sample_mismatch" in data["summary"]
    assert "FAILED at sample_mismatch" in (tmp_path / "out" / "report.html").read_text()


def test_a_check_report_of_another_bundle_is_refused(
        example_report: Written, tmp_path: Path, baton_env: dict[str, str]) -> None:
    other = dict(example_report.data["check"], bundle={"digest": "sha256:" + "0" * 64})
    (tmp_path / "check.json").write_text(json.dumps(other))
    r = run_baton("report", EXAMPLE, "--check-report", tmp_path / "check.json", "--output",
                  tmp_path / "out", env=baton_env)
    assert r.returncode != 0 and "CHECK_REPORT_MISMATCH" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
