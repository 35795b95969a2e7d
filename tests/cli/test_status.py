"""`baton status` and `baton top`: the engine's live figures in the terminal."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BATON, Server, run_baton


def traffic(server: Server, stop: threading.Event) -> None:
    while not stop.is_set():
        server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 1}])
        server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 999}])


def test_status_shows_traffic_and_the_failing_stage(serve: Callable[..., Server],
                                                    chaos_bundle: Path,
                                                    baton_env: dict[str, str]) -> None:
    server = serve([chaos_bundle])
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(server, stop))
    t.start()
    try:
        r = run_baton("status", "--url", server.url, env={**baton_env, "COLUMNS": "250"})
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "chaos" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:3] == ["chaos", "1.0.0", "yes"] and cells[3] == "1/1"
    assert float(cells[5]) > 0  # requests per second
    assert cells[9] == "contract"  # errors are rising at the input contract


def test_top_refreshes_until_interrupted(serve: Callable[..., Server], chaos_bundle: Path,
                                         baton_env: dict[str, str]) -> None:
    server = serve([chaos_bundle])
    proc = subprocess.Popen([*BATON, "top", "--url", server.url, "--interval", "0.3"],
                            env={**baton_env, "COLUMNS": "250"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "chaos" in out and "req/s" in out


def test_status_of_an_engine_that_is_down(baton_env: dict[str, str]) -> None:
    r = run_baton("status", "--url", "http://127.0.0.1:9", env=baton_env)
    assert r.returncode == 1 and "ENGINE_UNREACHABLE" in r.stderr
