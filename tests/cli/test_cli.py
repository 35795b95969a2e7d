"""The `baton` command: output, JSON reports and exit codes, on real bundles."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import check, edit
from tests.conftest import run_baton, tamper


def test_help_and_version(baton_env: dict[str, str]) -> None:
    r = run_baton("--help", env=baton_env)
    assert r.returncode == 0
    for cmd in ("init", "build", "check", "serve", "contract", "extract"):
        assert cmd in r.stdout
    assert run_baton("--version", env=baton_env).stdout.startswith("baton, version")


def test_init_then_check_passes_and_measures(scaffolded: Path, baton_env: dict[str, str]) -> None:
    code, report, out = check(scaffolded, baton_env)
    assert code == 0, out
    assert report["passed"] is True and report["failed_stage"] is None
    assert [s["stage"] for s in report["stages"]] == [
        "manifest", "dependency_resolution", "import", "load", "input_contract", "model",
        "output_contract", "sample_mismatch", "single_records", "null_record", "latency"]
    assert all(s["ok"] for s in report["stages"]) and report["exit_code"] == 0
    m = report["measurements"]
    assert m["environment"]["build_seconds"] >= 0 and "cached" in m["environment"]
    assert m["load_seconds"] > 0
    assert set(m["latency"]) == {"rows_1", "rows_100"}
    assert m["latency"]["rows_100"]["calls"] == 5
    assert m["memory_mb"]["worker_rss_mb"] > 1
    assert "PASS" in out and report["bundle"]["digest"].startswith("sha256:")


def test_a_relative_baton_home_works_from_any_folder(scaffolded: Path, baton_home: Path,
                                                    baton_env: dict[str, str]) -> None:
    """BATON_HOME=some/folder, as a user writes it: the worker, which runs in the bundle's
    folder, still finds its environment (it got 'No such file or directory')."""
    import os

    relative = os.path.relpath(baton_home, scaffolded.parent)
    assert not Path(relative).is_absolute()
    report = scaffolded.parent / "relative-home.json"
    r = run_baton("check", scaffolded.name, "--report", report.name, "--iterations", "5",
                  env={**baton_env, "BATON_HOME": relative}, cwd=scaffolded.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(report.read_text())["passed"] is True


def test_check_fails_on_manifest(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "baton.toml", 'version = "0.1.0"', 'version = ""')
    code, report, out = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (2, "manifest")
    assert "bundle.version" in report["error"]["message"] and "FAIL" in out


def test_check_fails_on_dependency_resolution(scaffolded: Path,
                                              baton_env: dict[str, str]) -> None:
    edit(scaffolded / "baton.toml", "requirements = []", 'requirements = ["six==999.0.0"]')
    code, report, out = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (4, "dependency_resolution")
    failures = report["error"]["details"]["failures"]
    assert failures[0]["requirement"] == "six==999.0.0"
    assert "six==999.0.0" in out


def test_check_fails_on_import(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "baton.toml", "model.predict:Model", "model.missing:Model")
    code, report, _ = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (5, "import")
    assert "model.missing" in report["error"]["message"]


def test_check_fails_on_load(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "model" / "predict.py", "self.scale = 1000.0",
         "raise RuntimeError('artifact is corrupt')")
    code, report, _ = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (5, "load")
    assert "artifact is corrupt" in report["error"]["message"]


def test_check_fails_on_input_contract(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "samples" / "input.json", '"FR"', '"XX"')
    code, report, _ = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (3, "input_contract")
    v = report["error"]["details"]["violations"][0]
    assert (v["record"], v["field"], v["got"]) == (2, "country", "XX")


def test_check_fails_on_output_contract(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "model" / "predict.py", "min(1.0, ", "(1.5 + ")
    code, report, _ = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (3, "output_contract")
    assert report["error"]["details"]["violations"][0]["field"] == "score"


def test_check_fails_on_sample_mismatch(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "samples" / "expected.json", "0.75", "0.7")
    code, report, out = check(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (3, "sample_mismatch")
    assert report["sample_mismatches"] == [
        {"record": 1, "field": "score", "expected": 0.7, "got": 0.75}]
    assert "record 1" in out


def test_build_is_reproducible_and_extract_verifies(scaffolded: Path, tmp_path: Path,
                                                    baton_env: dict[str, str]) -> None:
    first = run_baton("build", scaffolded, "-o", tmp_path / "a", env=baton_env)
    second = run_baton("build", scaffolded, "-o", tmp_path / "b", env=baton_env)
    assert first.returncode == 0, first.stderr
    digest = first.stdout.split()[-1]
    assert digest.startswith("sha256:") and second.stdout.split()[-1] == digest
    archive = tmp_path / "a" / "demo-0.1.0.baton"
    assert archive.read_bytes() == (tmp_path / "b" / "demo-0.1.0.baton").read_bytes()
    ok = run_baton("extract", archive, tmp_path / "out", "--digest", digest, env=baton_env)
    assert ok.returncode == 0 and ok.stdout.strip() == digest
    assert (tmp_path / "out" / "model" / "predict.py").is_file()
    wrong = run_baton("extract", archive, tmp_path / "out2", "--digest", "sha256:" + "0" * 64,
                      env=baton_env)
    assert wrong.returncode == 2 and "DIGEST_MISMATCH" in wrong.stderr


def test_tampered_archive_is_refused(scaffolded: Path, tmp_path: Path,
                                     baton_env: dict[str, str]) -> None:
    run_baton("build", scaffolded, "-o", tmp_path, env=baton_env)
    archive = tmp_path / "demo-0.1.0.baton"
    tamper(archive, b"0.5", b"0.9")
    r = run_baton("extract", archive, tmp_path / "x", env=baton_env)
    assert r.returncode == 2
    assert "DIGEST_MISMATCH" in r.stderr and "model/predict.py" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_baton("check", archive, "--report", tmp_path / "r.json", env=baton_env)
    assert r.returncode == 2
    assert json.loads((tmp_path / "r.json").read_text())["failed_stage"] == "manifest"


def test_contract_prints_json_schema(scaffolded: Path, baton_env: dict[str, str]) -> None:
    r = run_baton("contract", scaffolded, env=baton_env)
    schema = json.loads(r.stdout)
    assert schema["properties"]["age"] == {"type": ["integer", "null"], "minimum": 0,
                                           "maximum": 150}
    assert schema["required"] == ["amount", "country"]
    out = json.loads(run_baton("contract", scaffolded, "--side", "outputs",
                               env=baton_env).stdout)
    assert out["properties"]["score"]["maximum"] == 1.0


def test_serve_refuses_an_invalid_manifest(scaffolded: Path, baton_env: dict[str, str]) -> None:
    edit(scaffolded / "baton.toml", "[model]", "[modle]")
    r = run_baton("serve", scaffolded, "--port", "0", env=baton_env, timeout=60)
    assert r.returncode == 2
    assert "INVALID_MANIFEST" in r.stderr and "modle" in r.stderr


def test_serve_on_a_port_in_use_fails_at_once_with_a_clear_error(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_baton("serve", scaffolded, "--port", str(port), env=baton_env, timeout=60)
    assert r.returncode == 1
    assert "SERVER_START_FAILED" in r.stderr and f"127.0.0.1:{port}" in r.stderr
    assert "environment" not in r.stderr  # it failed before building anything


def test_serve_on_port_0_prints_the_port_it_got(chaos_bundle: Path,
                                                baton_env: dict[str, str]) -> None:
    import re
    import subprocess
    import time

    import httpx

    from tests.conftest import BATON

    proc = subprocess.Popen([*BATON, "serve", str(chaos_bundle), "--port", "0"],
                            env=baton_env, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    try:
        deadline, port = time.monotonic() + 120, None
        assert proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "baton serve exited before serving"
            found = re.search(r"Baton is serving at http://127\.0\.0\.1:(\d+) ", line)
            port = int(found.group(1)) if found else None
        assert port and port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # drains and closes stderr
