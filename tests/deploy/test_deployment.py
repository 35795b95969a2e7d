"""Deployment files: bundles bound to workers and streams by configuration, not code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server, free_port, run_baton


def wait_lines(path: Path, n: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {n} lines")


def test_deployment_file_binds_streams_and_workers(serve: Callable[..., Server],
                                                   chaos_bundle: Path, tmp_path: Path) -> None:
    records = [{"action": "ok", "x": i} for i in range(50)]
    lines = [json.dumps(r) for r in records] + ['{"action": "ok", "x": 500}', "{broken"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "deploy.toml").write_text(f'''
[[deployments]]
bundle = "{chaos_bundle}"
workers = 2

[deployments.stream]
input = "file://{tmp_path}/in.jsonl"
output = "file://{tmp_path}/out.jsonl"
dead_letter = "file://{tmp_path}/dead.jsonl"
max_batch = 16
''')
    server = serve([], "--deployment", str(tmp_path / "deploy.toml"))
    out = wait_lines(tmp_path / "out.jsonl", 50)
    dead = wait_lines(tmp_path / "dead.jsonl", 2)
    assert [o["output"]["y"] for o in out] == [2.0 * i for i in range(50)]
    assert [o["key"] for o in out] == [str(i) for i in range(1, 51)]  # line numbers
    assert {(d["key"], d["stage"]) for d in dead} == {("51", "contract"), ("52", "decode")}
    assert dead[0]["violations"][0]["field"] == "x"
    assert len(server.worker_pids("chaos")) in (1, 2)
    streams = server.client.get("/v1/models").json()["streams"][0]
    assert (streams["consumed"], streams["produced"], streams["dead_lettered"]) == (52, 50, 2)
    # The backlog is sampled every 5 s: nothing is left once everything was read.
    deadline = time.monotonic() + 15
    while server.client.get("/v1/models").json()["streams"][0]["lag"] != 0:
        assert time.monotonic() < deadline, "lag never came down to 0"
        time.sleep(0.2)
    assert 'baton_stream_lag_records{input="file://' in server.client.get("/metrics").text


def test_invalid_deployment_file_names_the_field(tmp_path: Path,
                                                 baton_env: dict[str, str]) -> None:
    bad = tmp_path / "deploy.toml"
    bad.write_text('[[deployments]]\nbundle = "x"\n[deployments.stream]\ninput = "file://a"\n')
    r = run_baton("serve", "--deployment", bad, "--port", str(free_port()), env=baton_env)
    assert r.returncode == 2
    assert "INVALID_DEPLOYMENT" in r.stderr and "deployments[0].stream.output" in r.stderr


def test_a_worker_crash_mid_stream_is_dead_lettered_and_its_error_clears_once_back(
        serve: Callable[..., Server], chaos_bundle: Path, tmp_path: Path) -> None:
    """The record that killed the worker goes to the dead letters; the records after it
    wait for the restarted worker (never dead-lettered) and the stream's error clears."""
    records = [{"action": "ok", "x": 1}, {"action": "crash", "x": 2}] + \
        [{"action": "ok", "x": i} for i in range(3, 30)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server = serve([chaos_bundle], "--input", f"file://{tmp_path}/in.jsonl",
                   "--output", f"file://{tmp_path}/out.jsonl",
                   "--dead-letter", f"file://{tmp_path}/dead.jsonl")
    out = wait_lines(tmp_path / "out.jsonl", 28)
    dead = wait_lines(tmp_path / "dead.jsonl", 1)
    assert [o["output"]["y"] for o in out] == [2.0] + [2.0 * i for i in range(3, 30)]
    assert [(d["key"], d["stage"], d["code"]) for d in dead] == [("2", "model",
                                                                  "WORKER_CRASHED")]
    # The records after it waited for the restarted worker (in the model's queue, see
    # BATON_RESTART_WAIT) and were answered by it.
    assert out[0]["output"]["pid"] != out[-1]["output"]["pid"]
    assert server.model("chaos")["parameters"]["restarts"] >= 1
    streams = server.client.get("/v1/models").json()["streams"][0]
    assert streams["last_error"] is None
