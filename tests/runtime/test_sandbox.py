"""Isolation levels on a real engine (docs/isolation.md): a hostile model under bubblewrap
and per-worker limits is refused or stopped with a clear error and restarted, while a
neighbour model in the same engine keeps answering every request.

Needs bubblewrap and writable cgroup v1 groups (root on these machines); both are set up by
scripts/ensure-packages.sh — missing, the tests fail rather than skip.
"""

from __future__ import annotations

import resource
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from baton.runtime import limits
from tests.conftest import Server, records_contract, write_bundle
from tests.runtime.test_faults import wait_until

HOSTILE_CODE = '''
import os, socket, time

SECRET = {secret!r}
PORT = {port}


class Model:
    def predict(self, inputs):
        out = []
        for action in inputs["action"]:
            if action == "write_bundle":
                open("planted.py", "w").write("x = 1")
            elif action == "write_home":
                open(os.path.join(os.path.dirname(SECRET), "planted"), "w").write("x")
            elif action == "write_tmp":
                with open("/tmp/scratch", "w") as f:
                    f.write("kept")
                out.append(float(open("/tmp/scratch").read() == "kept"))
                continue
            elif action == "read_secret":
                out.append(float(os.path.exists(SECRET)))
                continue
            elif action == "read_env":  # a credential in the engine's environment
                out.append(float("BATON_TEST_CREDENTIAL" in os.environ))
                continue
            elif action == "connect":
                socket.create_connection(("127.0.0.1", PORT), timeout=5).close()
            elif action == "allocate":
                hoard = []
                while True:
                    hoard.append(bytearray(16 << 20))
            elif action == "fork":
                while True:
                    if os.fork() == 0:
                        time.sleep(120)
                        os._exit(0)
            elif action == "fork_return":  # the child returns from the model too
                os.fork()
            elif action == "spin":  # a second of CPU, then what its cpu group counted
                end = time.process_time() + 1.0
                while time.process_time() < end:
                    pass
                group = [line.split(":")[2].strip() for line in open("/proc/self/cgroup")
                         if line.split(":")[1] in ("cpu", "cpu,cpuacct")][0]
                stat = open(f"/sys/fs/cgroup/cpu{{group}}/cpu.stat").read().split()
                out.append(float(stat[stat.index("nr_throttled") + 1]))
                continue
            elif action == "open_files":
                hoard = [open("/dev/null") for _ in range(100000)]
            out.append(1.0)
        return {{"y": out}}
'''

ACTIONS = ["ok", "write_bundle", "write_home", "write_tmp", "read_secret", "connect",
           "allocate", "fork", "fork_return", "spin", "open_files", "read_env"]
CONTRACT = records_contract(inputs={"action": {"type": "string", "categories": ACTIONS}},
                            outputs={"y": "float"})
LIMITS = {"memory_mb": 200, "processes": 24, "open_files": 64}


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on the host's loopback that accepts connections (outside any sandbox)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def hostile_bundle(path: Path, secret: Path, port: int, isolation: str) -> Path:
    return write_bundle(path, name="hostile", contract=CONTRACT,
                        code=HOSTILE_CODE.format(secret=str(secret), port=port),
                        manifest_extra=isolation)


def predict(server: Server, action: str) -> httpx.Response:
    return server.client.post("/v1/models/hostile/predict", json=[{"action": action}])


class Neighbour:
    """Sends requests to the other model for as long as the test runs; every answer must be
    a 200."""

    def __init__(self, server: Server) -> None:
        self.server, self.answers, self.failures = server, 0, list[str]()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        wait_until(lambda: self.answers > 0, 60, what="the neighbour answers")

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=60) as client:
            while not self.done.is_set():
                resp = client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 2}])
                if resp.status_code != 200 or resp.json()["predictions"][0]["y"] != 4.0:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                self.answers += 1

    def stop(self) -> None:
        seen = self.answers  # it answers after all the hostile model did, too
        wait_until(lambda: self.answers > seen or not self.thread.is_alive(), 60,
                   what="the neighbour answers at the end")
        self.done.set()
        self.thread.join(60)
        assert not self.failures, f"the neighbour noticed: {self.failures[:3]}"


def expect_error(resp: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["error"], body
    return body


def test_a_sandboxed_model_cannot_write_outside_tmp_read_the_host_or_reach_the_network(
        serve: Callable[..., Server], chaos_bundle: Path, tmp_path: Path,
        listener: int) -> None:
    secret = tmp_path / "home" / "secret-token"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    bundle = hostile_bundle(tmp_path / "hostile", secret, listener,
                            '[isolation]\nlevel = "sandbox"\n')
    credential = {"BATON_TEST_CREDENTIAL": "token-of-the-engine"}
    server = serve([bundle, chaos_bundle], env=credential)
    neighbour = Neighbour(server)
    try:
        assert predict(server, "read_env").json()["predictions"][0]["y"] == 0.0
        expect_error(predict(server, "write_bundle"), 500, "SANDBOX_REFUSED",
                     "read-only", "Read-only file system")
        assert not (bundle / "planted.py").exists()
        expect_error(predict(server, "write_home"), 500, "MODEL_ERROR",
                     "No such file or directory")  # the host's folders do not exist there
        assert not (secret.parent / "planted").exists()
        expect_error(predict(server, "connect"), 500, "SANDBOX_REFUSED", "no network")
        assert predict(server, "read_secret").json()["predictions"][0]["y"] == 0.0
        assert predict(server, "write_tmp").json()["predictions"][0]["y"] == 1.0
        assert predict(server, "ok").status_code == 200
    finally:
        neighbour.stop()
    # the same model, unsandboxed, could do all of it: the refusals are the sandbox's
    (tmp_path / "plain").mkdir()
    plain = hostile_bundle(tmp_path / "plain" / "hostile", secret, listener, "")
    unsandboxed = serve([plain], env=credential)
    assert predict(unsandboxed, "read_secret").json()["predictions"][0]["y"] == 1.0
    assert predict(unsandboxed, "read_env").json()["predictions"][0]["y"] == 1.0
    assert predict(unsandboxed, "connect").status_code == 200


def test_the_operator_can_sandbox_a_bundle_that_did_not_ask_and_cannot_unsandbox_one_that_did(
        serve: Callable[..., Server], tmp_path: Path, listener: int) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    asked = hostile_bundle(tmp_path / "asked", secret, listener,
                           '[isolation]\nlevel = "sandbox"\nnetwork = true\n')
    server = serve([asked], env={"BATON_ISOLATION": "process", "BATON_MODEL_NETWORK": "false"})
    assert predict(server, "read_secret").json()["predictions"][0]["y"] == 0.0  # sandboxed
    expect_error(predict(server, "connect"), 500, "SANDBOX_REFUSED")  # operator said no
    plain = hostile_bundle(tmp_path / "plain", secret, listener, "")
    sandboxed = serve([plain], env={"BATON_ISOLATION": "sandbox"})
    assert predict(sandboxed, "read_secret").json()["predictions"][0]["y"] == 0.0
    assert sandboxed.model("hostile")["parameters"]["isolation"]["level"] == "sandbox"


@pytest.mark.parametrize("level", ["process", "sandbox"])
def test_a_model_past_its_limits_is_stopped_with_a_clear_error_and_restarted(
        serve: Callable[..., Server], chaos_bundle: Path, tmp_path: Path, listener: int,
        level: str) -> None:
    asked = "".join(f"{k} = {v}\n" for k, v in LIMITS.items())
    bundle = hostile_bundle(tmp_path / "hostile", tmp_path / "secret", listener,
                            f'[isolation]\nlevel = "{level}"\n{asked}')
    server = serve([bundle, chaos_bundle])
    neighbour = Neighbour(server)
    try:
        for action, status, code, words in [
                ("allocate", 500, "MEMORY_LIMIT", ["memory limit (200 MiB)"]),
                ("fork", 500, "PROCESS_LIMIT", ["process limit (24 processes)"]),
                ("open_files", 500, "OPEN_FILES_LIMIT", ["limit of open files (64)"])]:
            restarts = server.model("hostile")["parameters"]["restarts"]
            expect_error(predict(server, action), status, code, *words)
            if code != "OPEN_FILES_LIMIT":  # the worker is replaced, with what it started
                wait_until(lambda r=restarts: server.model("hostile")["parameters"]
                           ["restarts"] > r, what=f"the worker restarted after {action}")
            wait_until(lambda: predict(server, "ok").status_code == 200, 60,
                       what=f"the model answers again after {action}")
        failure = server.model("hostile")["parameters"]["last_failure"]
        assert "limit" in failure["reason"], failure
    finally:
        neighbour.stop()
    engine = server.proc.pid
    groups = [limits._engine_group(c) for c in ("memory", "cpu", "pids")]
    assert any((g / f"baton-{engine}").is_dir() for g in groups if g)  # where they were
    assert server.stop() == 0
    left = [str(g / f"baton-{engine}") for g in groups if g and (g / f"baton-{engine}").exists()]
    assert not left, f"control groups left behind: {left}"


def test_a_child_the_model_forks_never_answers_or_reads_a_request(
        serve: Callable[..., Server], tmp_path: Path, listener: int) -> None:
    """A forked child that returns from predict() into the runner ends there: it would
    otherwise answer twice and then take requests from its parent's pipe."""
    server = serve([hostile_bundle(tmp_path / "hostile", tmp_path / "secret", listener, "")])
    [pid] = server.worker_pids("hostile")
    assert predict(server, "fork_return").json()["predictions"] == [{"y": 1.0}]

    def runner_children() -> list[psutil.Process]:
        return [c for c in psutil.Process(pid).children()
                if c.status() != psutil.STATUS_ZOMBIE]

    wait_until(lambda: not runner_children(), what="the forked child ended")
    for _ in range(20):
        assert predict(server, "ok").json()["predictions"] == [{"y": 1.0}]
    assert server.worker_pids("hostile") == [pid]


def test_a_cpu_limit_is_a_quota_the_kernel_holds_the_worker_to(
        serve: Callable[..., Server], tmp_path: Path, listener: int) -> None:
    bundle = hostile_bundle(tmp_path / "hostile", tmp_path / "secret", listener, "")
    server = serve([bundle], env={"BATON_WORKER_CPUS": "0.2"})
    assert server.model("hostile")["parameters"]["isolation"]["cpus"] == 0.2
    spun = predict(server, "spin")
    assert spun.status_code == 200, spun.text
    throttled = spun.json()["predictions"][0]["y"]
    assert throttled >= 2  # a second of CPU at 20 ms per 100 ms: held back again and again


def test_a_limit_that_cannot_be_enforced_refuses_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host without writable control groups (here: the cgroup root pointed at an
    empty folder), memory falls back to an address-space limit, and a CPU quota, which has
    no fallback, is refused rather than dropped."""
    from baton.errors import WorkerError
    from baton.runtime.isolation import Isolation

    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    memory = limits.WorkerLimits.prepare(Isolation(memory_mb=300, open_files=64), "m")
    assert memory.groups == {}
    assert memory.rlimits == {resource.RLIMIT_AS: 300 << 20, resource.RLIMIT_NOFILE: 64}
    with pytest.raises(WorkerError, match=r"a CPU limit \(0.5\) needs the cpu control group"
                       ) as err:
        limits.WorkerLimits.prepare(Isolation(cpus=0.5), "m")
    assert err.value.code == "LIMIT_UNAVAILABLE"


def test_an_isolation_the_manifest_cannot_mean_is_refused_naming_the_field(
        tmp_path: Path, listener: int) -> None:
    from baton.bundle.manifest import BundleManifest
    from baton.errors import ManifestError

    bundle = hostile_bundle(tmp_path / "bad", tmp_path / "secret", listener,
                            '[isolation]\nlevel = "jail"\n')
    with pytest.raises(ManifestError, match=r"isolation.level must be 'process' or 'sandbox'"):
        BundleManifest.load(bundle)
    bundle = hostile_bundle(tmp_path / "bad2", tmp_path / "secret", listener,
                            "[isolation]\nmemory_mb = -1\n")
    with pytest.raises(ManifestError, match=r"isolation.memory_mb must be an integer >= 0"):
        BundleManifest.load(bundle)


def test_at_exit_the_engine_ends_what_is_left_in_its_groups_and_removes_them(
        tmp_path: Path) -> None:
    """A worker's child still running (or still exiting) as the engine stops would keep
    its group; the engine's exit ends it and removes every group it made."""
    import subprocess

    from baton.runtime.isolation import Isolation

    worker = limits.WorkerLimits.prepare(Isolation(memory_mb=300, processes=8), "left")
    assert set(worker.groups) == {"memory", "pids"}, "the memory and pids groups are needed"
    child = subprocess.Popen(["sleep", "60"])
    try:
        worker.apply([child.pid])
        assert not worker.remove()  # a group holding a process cannot be removed
        own = {folder.parent for folder in worker.groups.values()}
        limits._remove_own()
        assert child.wait(timeout=10) == -9
        assert [str(f) for f in own if f.exists()] == []
    finally:
        child.kill()
        child.wait()
    again = limits.WorkerLimits.prepare(Isolation(memory_mb=300), "again")
    assert again.remove()
