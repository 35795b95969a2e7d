"""Worker faults on a real engine: crashes, hangs, SIGKILL under load, load failures, drain."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server


def rec(action: str = "ok", x: float = 1.0) -> list[dict[str, Any]]:
    return [{"action": action, "x": x}]


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def status(server: Server, path: str) -> int:
    try:
        return server.client.get(path).status_code
    except httpx.TransportError:
        return 0  # not listening yet


def ok(server: Server) -> bool:
    return server.client.post("/v1/models/chaos/predict", json=rec()).status_code == 200


def test_crash_fails_in_flight_request_clearly_then_worker_is_replaced(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle])
    [old_pid] = server.worker_pids("chaos")
    resp = server.client.post("/v1/models/chaos/predict", json=rec("crash"))
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["code"] == "WORKER_CRASHED"
    assert "exited with code 3" in body["error"]
    wait_until(lambda: ok(server))
    params = server.model("chaos")["parameters"]
    assert params["restarts"] >= 1
    assert "exited with code 3" in params["last_failure"]["reason"]
    assert server.worker_pids("chaos") != [old_pid]


def test_hung_worker_is_timed_out_killed_and_restarted(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--timeout", "1")
    [old_pid] = server.worker_pids("chaos")
    started = time.monotonic()
    resp = server.client.post("/v1/models/chaos/predict", json=rec("hang"))
    assert resp.status_code == 504, resp.text
    assert resp.json()["code"] == "WORKER_TIMEOUT"
    assert time.monotonic() - started < 20  # an error, never a hang
    wait_until(lambda: ok(server))
    assert server.worker_pids("chaos") != [old_pid]
    assert "hung" in server.model("chaos")["parameters"]["last_failure"]["reason"]
    try:
        os.kill(old_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the hung worker must have been killed"


def test_worker_killed_with_sigkill_under_load_is_replaced(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--workers", "2")
    wait_until(lambda: len(server.worker_pids("chaos")) == 2)  # ready means one is up
    pids = server.worker_pids("chaos")
    statuses: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post("/v1/models/chaos/predict", json=rec(x=i % 50))
                statuses.append((time.monotonic(), r.status_code, r.json().get("code", "")))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert statuses, "no request completed"
    bad = [(s, c) for _, s, c in statuses if s != 200]
    assert all(s == 503 and c == "WORKER_CRASHED" for s, c in bad), bad
    assert sum(1 for t, s, _ in statuses if t > killed_at + 1.0 and s == 200) > 10
    wait_until(lambda: len(server.worker_pids("chaos")) == 2)
    new = server.worker_pids("chaos")
    assert pids[0] not in new and pids[1] in new
    params = server.model("chaos")["parameters"]
    assert params["restarts"] == 1
    assert "SIGKILL" in params["last_failure"]["reason"]


def test_model_that_fails_to_load_is_reported_and_others_keep_serving(
        serve: Callable[..., Server], chaos_bundle: Path, tensor_bundle: Path,
        tmp_path: Path) -> None:
    broken = shutil.copytree(chaos_bundle, tmp_path / "broken")
    (broken / "FAIL_LOAD").write_text("")
    server = serve([broken, tensor_bundle], ready=False)
    wait_until(lambda: status(server, "/v2/models/rowsum/ready") == 200)
    wait_until(lambda: server.model("chaos")["parameters"]["load_error"] is not None)
    assert server.client.get("/v2/health/ready").status_code == 503
    assert server.client.get("/v2/models/chaos/ready").status_code == 503
    resp = server.client.post("/v1/models/chaos/predict", json=rec())
    assert resp.status_code == 503 and resp.json()["code"] == "MODEL_NOT_READY"
    assert "load failed on purpose" in resp.json()["error"]
    resp = server.client.post("/v2/models/rowsum/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 1, 1]}]})
    assert resp.status_code == 200 and resp.json()["outputs"][0]["data"] == [3.0]


def test_shutdown_drains_in_flight_work(serve: Callable[..., Server],
                                        chaos_bundle: Path) -> None:
    server = serve([chaos_bundle])
    result: dict[str, Any] = {}

    def slow() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            result["resp"] = client.post("/v1/models/chaos/predict", json=rec("sleep", 4))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert result["resp"].status_code == 200
    assert result["resp"].json()["predictions"][0]["y"] == 8.0
    assert server.proc.wait(30) == 0
    try:
        server.client.get("/v2/health/live")
        refused = False
    except httpx.TransportError:
        refused = True
    assert refused


def test_worker_cannot_import_baton_or_its_dependencies(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    from tests.conftest import write_bundle

    code = '''
    import importlib.util

    class Model:
        def predict(self, inputs):
            found = [m for m in ("baton", "msgspec", "orjson", "uvicorn", "click")
                     if importlib.util.find_spec(m) is not None]
            return {"leaked": [",".join(found)] * len(inputs["x"])}
    '''
    contract = '''
    [contract]
    kind = "records"
    [[contract.inputs]]
    name = "x"
    type = "float"
    [[contract.outputs]]
    name = "leaked"
    type = "string"
    '''
    bundle = write_bundle(tmp_path / "probe", name="probe", code=code, contract=contract)
    server = serve([bundle])
    resp = server.client.post("/v1/models/probe/predict", json=[{"x": 1}])
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == [{"leaked": ""}]
    pid = server.worker_pids("probe")[0]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-I" in argv and b"/envs/" in argv[0]  # the model's own interpreter, isolated
