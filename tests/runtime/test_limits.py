"""Operator limits on a real engine: the queue bound (QUEUE_FULL, PAYLOAD_TOO_LARGE) and the
threads each worker's numeric libraries may use (worker_threads)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server, free_port, run_baton
from tests.runtime.test_faults import busy_worker, post_in_thread, rec, wait_until


def queued_rows(server: Server) -> int:
    return int(server.model("chaos")["parameters"]["queued_rows"])


def test_a_full_queue_answers_503_queue_full_and_nothing_queued_is_lost(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--timeout", "300", env={"BATON_MAX_QUEUE_ROWS": "3"})
    [pid] = server.worker_pids("chaos")
    os.kill(pid, signal.SIGSTOP)  # the worker takes a batch and answers nothing until SIGCONT
    try:
        first = post_in_thread(server, rec(x=1))
        busy_worker(server)
        waiting = [post_in_thread(server, rec(x=2)),
                   post_in_thread(server, [{"action": "ok", "x": 3}, {"action": "ok", "x": 4}])]
        wait_until(lambda: queued_rows(server) == 3, what="3 rows queued behind the worker")

        full = server.client.post("/v1/models/chaos/predict", json=rec(x=5))
        assert full.status_code == 503, full.text
        assert full.json()["code"] == "QUEUE_FULL"
        assert "queue is full (3 rows waiting)" in full.json()["error"]
        too_big = server.client.post("/v1/models/chaos/predict", json=rec(x=6) * 4)
        assert too_big.status_code == 413, too_big.text
        assert too_big.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert too_big.json()["details"] == {"rows": 4, "limit": 3}
        assert queued_rows(server) == 3  # refused requests took no room
    finally:
        os.kill(pid, signal.SIGCONT)
    answers = []
    for thread, result in [first, *waiting]:
        thread.join(60)
        assert result["resp"].status_code == 200, result["resp"].text
        answers += [p["y"] for p in result["resp"].json()["predictions"]]
    assert answers == [2.0, 4.0, 6.0, 8.0]
    assert server.client.post("/v1/models/chaos/predict", json=rec(x=5)).status_code == 200


def thread_variables(pid: int) -> dict[str, str]:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    return {k: v for k, v in pairs.items()
            if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def test_worker_threads_sets_the_numeric_libraries_threads_in_each_worker(
        serve: Callable[..., Server], chaos_bundle: Path, baton_env: dict[str, str]) -> None:
    one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    server = serve([chaos_bundle])
    [pid] = server.worker_pids("chaos")
    assert thread_variables(pid) == one  # the default: 1, whatever the engine's environment

    server = serve([chaos_bundle], "--workers", "2", env={"BATON_WORKER_THREADS": "3",
                                                          "OMP_NUM_THREADS": "8"})
    wait_until(lambda: len(server.worker_pids("chaos")) == 2, what="two ready workers")
    for pid in server.worker_pids("chaos"):
        assert thread_variables(pid) == {k: "3" for k in one}

    bad = run_baton("serve", chaos_bundle, "--port", str(free_port()),
                    env={**baton_env, "BATON_WORKER_THREADS": "0"})
    assert bad.returncode == 2
    assert "setting worker_threads (BATON_WORKER_THREADS) must be a positive integer, got 0" \
        in bad.stderr
