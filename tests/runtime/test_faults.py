"""Worker faults on a real engine: crashes, hangs, SIGKILL under load, load failures, drain.

The engine runs one worker per model here (tests/conftest.py sets BATON_WORKERS=1) unless a
test asks for more.
"""

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


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout:g}s{': ' + what if what else ''}")


def busy_worker(server: Server, model: str = "chaos") -> int:
    """The pid of the one worker with a request in flight (waits until there is one)."""
    found: list[int] = []

    def one_busy() -> bool:
        found[:] = [w["pid"] for w in server.model(model)["parameters"]["workers"]
                    if w["in_flight"] > 0]
        return len(found) == 1

    wait_until(one_busy, what="a request in flight on exactly one worker")
    return found[0]


def post_in_thread(server: Server, records: list[dict[str, Any]]
                   ) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    result: dict[str, httpx.Response] = {}

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            result["resp"] = client.post("/v1/models/chaos/predict", json=records)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, result


def status(server: Server, path: str) -> int:
    try:
        return server.client.get(path).status_code
    except httpx.TransportError:
        return 0  # not listening yet


def refuses_connections(server: Server) -> bool:
    try:
        httpx.get(f"{server.url}/v2/health/live", timeout=5)  # a new connection
    except httpx.TransportError:
        return True
    return False


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
    # The model's own exit is not retried: the request would kill a second worker.
    assert params["restarts"] == 1 and params["retried_requests"] == 0
    assert "exited with code 3" in params["last_failure"]["reason"]
    assert server.worker_pids("chaos") != [old_pid]


def test_a_request_that_kills_its_worker_never_fails_the_requests_merged_with_it(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    """The model exits on one request of a merged batch: only that request fails."""
    server = serve([chaos_bundle])
    busy, _ = post_in_thread(server, rec("sleep", 1))  # holds the one worker
    busy_worker(server)
    crash, crashed = post_in_thread(server, rec("crash"))
    fine, answered = post_in_thread(server, rec(x=4))
    # both wait behind the sleeping request, so the worker takes them as one batch
    wait_until(lambda: server.model("chaos")["parameters"]["queued_rows"] == 2,
               what="the crashing and the good request queued together")
    for thread in (busy, crash, fine):
        thread.join(120)
    assert crashed["resp"].status_code == 503, crashed["resp"].text
    assert crashed["resp"].json()["code"] == "WORKER_CRASHED"
    assert answered["resp"].status_code == 200, answered["resp"].text
    assert answered["resp"].json()["predictions"][0]["y"] == 8.0
    params = server.model("chaos")["parameters"]
    # one restart for the merged batch, one for the crashing request alone
    assert params["restarts"] == 2 and params["retried_requests"] == 0


FAULT_CODE = '''
import os, signal

class Model:
    def predict(self, inputs):
        if inputs["x"][0] < 0:
            os.kill(os.getpid(), signal.SIGSEGV if inputs["x"][0] == -1 else signal.SIGABRT)
        return {"y": list(inputs["x"])}
'''


def test_a_worker_that_faults_on_a_request_is_not_given_a_second_worker_to_kill(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    from tests.conftest import records_contract, write_bundle

    bundle = write_bundle(tmp_path / "faulty", name="faulty", code=FAULT_CODE,
                          contract=records_contract({"x": "float"}, {"y": "float"}))
    server = serve([bundle], "--workers", "2")
    wait_until(lambda: len(server.worker_pids("faulty")) == 2, what="two ready workers")
    for x, name in ((-1, "SIGSEGV"), (-2, "SIGABRT")):
        resp = server.client.post("/v1/models/faulty/predict", json=[{"x": x}])
        assert resp.status_code == 503, resp.text
        assert resp.json()["code"] == "WORKER_CRASHED" and name in resp.json()["error"]
    params = server.model("faulty")["parameters"]
    assert params["retried_requests"] == 0 and params["restarts"] == 2


GARBLE_CODE = '''
import gc, struct

FRAMES = {-1: struct.pack(">II", 8, 4) + b"nope",       # a header that is not JSON
          -2: struct.pack(">II", 7, 3) + b"[1]",        # JSON, but not an object
          -3: struct.pack(">II", 6, 9) + b"{}",         # a header longer than its frame
          -4: struct.pack(">I", 2**31)}                 # a frame past any answer's size

class Model:
    def predict(self, inputs):
        frame = FRAMES.get(inputs["x"][0])
        if frame is not None:  # what a model that finds the runner's channel can write
            runner = next(o for o in gc.get_objects() if type(o).__name__ == "Runner")
            runner.out.write(frame)
            runner.out.flush()
        return {"y": list(inputs["x"])}
'''


def test_a_worker_that_breaks_the_protocol_is_stopped_and_replaced(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    """Before: the frame's error escaped the pipe's callback, the engine stopped reading
    the worker, and the request waited for its timeout (or the engine held whatever size
    the frame declared)."""
    from tests.conftest import records_contract, write_bundle

    bundle = write_bundle(tmp_path / "garble", name="garble", code=GARBLE_CODE,
                          contract=records_contract({"x": "float"}, {"y": "float"}))
    server = serve([bundle])
    for x, why in ((-1, "JSONDecodeError"), (-2, "header is a JSON list"),
                   (-3, "declares a header of 9"), (-4, "more than a frame may have")):
        [pid] = server.worker_pids("garble")
        resp = server.client.post("/v1/models/garble/predict", json=[{"x": x}], timeout=60)
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["code"] == "WORKER_CRASHED", body
        assert "broke the worker protocol" in body["error"] and why in body["error"], body
        wait_until(lambda: ok_garble(server), what="a replacement worker answering")
        params = server.model("garble")["parameters"]
        assert "broke the worker protocol" in params["last_failure"]["reason"]
        assert server.worker_pids("garble") != [pid]
    assert server.model("garble")["parameters"]["retried_requests"] == 0


def ok_garble(server: Server) -> bool:
    resp = server.client.post("/v1/models/garble/predict", json=[{"x": 2.0}])
    return resp.status_code == 200 and resp.json()["predictions"] == [{"y": 2.0}]


def test_a_request_in_flight_on_a_worker_killed_from_outside_is_answered_by_another(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--workers", "2")
    wait_until(lambda: len(server.worker_pids("chaos")) == 2, what="two ready workers")
    thread, result = post_in_thread(server, rec("sleep", 21))
    victim = busy_worker(server)
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    resp = result["resp"]
    assert resp.status_code == 200, resp.text
    [answer] = resp.json()["predictions"]
    assert answer["y"] == 42.0 and answer["pid"] != victim
    params = server.model("chaos")["parameters"]
    assert params["retried_requests"] == 1 and params["restarts"] == 1
    assert "SIGKILL" in params["last_failure"]["reason"]


def test_with_one_worker_a_killed_request_waits_for_the_restarted_worker(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle])
    thread, result = post_in_thread(server, rec("sleep", 5))
    victim = busy_worker(server)
    os.kill(victim, signal.SIGKILL)
    queued = server.client.post("/v1/models/chaos/predict", json=rec(x=7))  # no worker now
    thread.join(120)
    assert result["resp"].status_code == 200, result["resp"].text
    assert queued.status_code == 200, queued.text
    [answer] = result["resp"].json()["predictions"]
    [restarted] = server.worker_pids("chaos")
    assert answer["y"] == 10.0 and answer["pid"] == restarted != victim
    assert queued.json()["predictions"][0]["pid"] == restarted


def test_requests_wait_a_bounded_time_for_a_worker_that_cannot_come_back(
        serve: Callable[..., Server], chaos_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(chaos_bundle, tmp_path / "chaos")
    server = serve([bundle], env={"BATON_RESTART_WAIT": "1"})
    [pid] = server.worker_pids("chaos")
    (bundle / "FAIL_LOAD").write_text("")  # every restart now fails to load
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not server.worker_pids("chaos"), what="the worker seen dead")
    resp = server.client.post("/v1/models/chaos/predict", json=rec())
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["code"] == "WORKER_UNAVAILABLE"
    assert "no worker was available within 1s" in body["error"]
    assert "restarting after" in body["error"]
    assert server.model("chaos")["parameters"]["expired_requests"] == 1
    (bundle / "FAIL_LOAD").unlink()
    wait_until(lambda: ok(server), 60, "the worker back once its model loads again")


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


def test_requests_behind_a_hung_worker_go_to_the_healthy_one(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--workers", "2", "--timeout", "300")
    wait_until(lambda: len(server.worker_pids("chaos")) == 2, what="two ready workers")
    hung, healthy = server.worker_pids("chaos")
    os.kill(hung, signal.SIGSTOP)  # hung: alive, answers nothing

    def in_flight(pids: tuple[int, ...]) -> int:
        return sum(w["in_flight"] for w in server.model("chaos")["parameters"]["workers"]
                   if w["pid"] in pids)

    sent: list[tuple[threading.Thread, dict[str, httpx.Response]]] = []
    try:
        # A slow request keeps the healthy worker busy, so the next one goes to the hung
        # worker (free workers are taken last-freed first: it may take a few tries).
        deadline = time.monotonic() + 60
        while not in_flight((hung,)):
            assert time.monotonic() < deadline, "no request reached the hung worker"
            sent.append(post_in_thread(server, rec("sleep", 1)))
            wait_until(lambda: in_flight((hung, healthy)) > 0 or not sent[-1][0].is_alive(),
                       what="the slow request dispatched")
        answers = [server.client.post("/v1/models/chaos/predict", json=rec(x=i))
                   for i in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert {a.json()["predictions"][0]["pid"] for a in answers} == {healthy}
        assert in_flight((hung,)) == 1  # still held by the hung worker
    finally:
        os.kill(hung, signal.SIGCONT)
    for thread, _ in sent:
        thread.join(60)
    assert [r["resp"].status_code for _, r in sent] == [200] * len(sent)
    assert hung in {r["resp"].json()["predictions"][0]["pid"] for _, r in sent}


def test_worker_killed_with_sigkill_under_load_fails_no_request(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--workers", "2")
    wait_until(lambda: len(server.worker_pids("chaos")) == 2)  # ready means one is up
    # A slow request holds the worker about to be killed: a request is surely in flight.
    held, result = post_in_thread(server, rec("sleep", 3))
    victim = busy_worker(server)
    # Frozen until the kill, so that its request is still in flight then however long the
    # load below takes to start on loaded cores (the model sleeps only 1 s).
    os.kill(victim, signal.SIGSTOP)
    [other] = [p for p in server.worker_pids("chaos") if p != victim]
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
    wait_until(lambda: len(statuses) > 20, what="load answered before the kill")
    os.kill(victim, signal.SIGKILL)
    held.join(120)
    before = len(statuses)
    wait_until(lambda: len(statuses) > before + 20, what="load answered after the kill")
    wait_until(lambda: len(server.worker_pids("chaos")) == 2, what="the worker replaced")
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    bad = [(s, c) for _, s, c in statuses if s != 200]
    assert bad == [], bad[:5]
    assert result["resp"].status_code == 200, result["resp"].text
    assert result["resp"].json()["predictions"][0]["y"] == 6.0
    new = server.worker_pids("chaos")
    assert victim not in new and other in new
    params = server.model("chaos")["parameters"]
    assert params["restarts"] == 1 and params["retried_requests"] == 1
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
    [pid] = server.worker_pids("chaos")
    os.kill(pid, signal.SIGSTOP)  # holds the request in the worker until SIGCONT
    t, result = post_in_thread(server, rec("ok", 4))
    busy_worker(server)
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(server), what="the engine stopping to listen")
    os.kill(pid, signal.SIGCONT)
    t.join(60)
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
