"""End to end: push -> validated -> staging -> approved -> production, served from the
registry under steady load with zero failed requests, then a rollback; stage policy;
tampered content never served; canary and shadow traffic."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from baton.bundle.archive import build_archive
from baton.registry.client import RegistryClient
from tests.conftest import BATON, Server, free_port, records_contract, run_baton, write_bundle

CODE = '''
class Model:
    def predict(self, inputs):
        return {{"y": [x * {factor} for x in inputs["x"]], "v": ["{version}"] * len(inputs["x"])}}
'''

CONTRACT = records_contract(
    inputs={"x": "float"},
    outputs={"y": "float", "v": "string"})


def scorer(root: Path, version: str, factor: float) -> Path:
    path = write_bundle(root / f"scorer-{version}", name="scorer",
                        code=CODE.format(factor=factor, version=version), contract=CONTRACT,
                        samples=([{"x": 1.0}], [{"y": factor, "v": version}]))
    manifest = path / "baton.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"',
                                                     f'version = "{version}"'))
    return build_archive(path, root / "archives").path


@dataclass
class Registry:
    url: str
    home: Path
    #: The registry's public key (``baton registry key``), which engines pin.
    key: str
    admin: RegistryClient
    tokens: dict[str, str]
    clients: dict[str, RegistryClient]

    def client(self, user: str) -> RegistryClient:
        if user not in self.clients:
            self.clients[user] = RegistryClient(self.url, self.tokens[user])
        return self.clients[user]

    def release(self, archive: Path, version: str) -> None:
        """The whole handoff: push, validate (a real check), stage, approve, production."""
        ds, op, ap = self.client("dana"), self.client("olga"), self.client("abe")
        ds.push(archive)
        assert ds.promote(f"scorer@{version}", "validated")["stage"] == "validated"
        op.promote(f"scorer@{version}", "staging")
        ap.decide(f"scorer@{version}", "approve", "reviewed the check report")
        assert op.promote(f"scorer@{version}", "production", "release")["stage"] == "production"


@contextlib.contextmanager
def running_registry(home: Path, baton_env: dict[str, str],
                     db: str | None = None) -> Iterator[Registry]:
    """A real ``baton registry serve`` (SQLite under ``home``, or the database ``db``) with
    an admin, a data scientist, an operator, an approver and a viewer (the engines')."""
    env = dict(baton_env, BATON_HOME=str(home), **({"BATON_REGISTRY_DB": db} if db else {}))
    token = run_baton("registry", "bootstrap-admin", "root", env=env).stdout.strip()
    key = run_baton("registry", "key", env=env).stdout.splitlines()[0]
    port = free_port()
    proc = subprocess.Popen([*BATON, "registry", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    admin = RegistryClient(url, token)
    reg = Registry(url, home, key, admin, {}, {})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.whoami()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for user, role in (("dana", "data-scientist"), ("olga", "operator"),
                           ("abe", "approver"), ("eve", "viewer")):
            admin.create_user(user, role)
            reg.tokens[user] = admin.create_token(user, 1)
        yield reg
    finally:
        for client in [admin, *reg.clients.values()]:
            client.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture
def registry(tmp_path: Path, baton_env: dict[str, str]) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry-home", baton_env) as reg:
        yield reg


def engine_env(baton_env: dict[str, str], reg: Registry) -> dict[str, str]:
    """A viewer's token, and the registry's key pinned."""
    return dict(baton_env, BATON_TOKEN=reg.tokens["eve"], BATON_REGISTRY_KEY=reg.key)


def caller(reg: Registry) -> dict[str, str]:
    """An engine following a registry takes its users' tokens: dana's has ``infer``."""
    return {"authorization": f"Bearer {reg.tokens['dana']}"}


def serve_registry(reg: Registry, baton_env: dict[str, str], *args: str) -> Server:
    server = Server([], engine_env(baton_env, reg), ["--registry", reg.url, "--poll", "0.2",
                                                      *args])
    server.client.headers.update(caller(reg))
    return server


def version_of(server: Server) -> str | None:
    try:
        resp = server.client.post("/v1/models/scorer/predict", json=[{"x": 1.0}])
    except httpx.TransportError:
        return None
    return resp.json()["predictions"][0]["v"] if resp.status_code == 200 else None


def wait_for(cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_promotion_and_rollback_under_load_with_zero_failed_requests(
        registry: Registry, baton_env: dict[str, str], tmp_path: Path) -> None:
    v1, v2 = scorer(tmp_path, "1.0.0", 2.0), scorer(tmp_path, "2.0.0", 3.0)
    registry.release(v1, "1.0.0")
    server = serve_registry(registry, baton_env)
    try:
        server.wait_ready()
        wait_for(lambda: version_of(server) == "1.0.0")
        # The check the registry ran when it validated the version sets its timeout.
        params = server.model("scorer")["parameters"]
        assert params["timeout_from"].startswith("check: p99 "), params["timeout_from"]
        assert params["timeout"] >= 10.0
        seen: list[tuple[int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30,
                              headers=caller(registry)) as client:
                while not stop.is_set():
                    r = client.post("/v1/models/scorer/predict", json=[{"x": 2.0}])
                    body = r.json()
                    seen.append((r.status_code, body["predictions"][0]["v"]
                                 if r.status_code == 200 else body.get("code", "")))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        registry.release(v2, "2.0.0")
        wait_for(lambda: bool(seen) and seen[-1][1] == "2.0.0")
        registry.client("olga").promote("scorer@1.0.0", "production", "rollback")
        wait_for(lambda: seen[-1][1] == "1.0.0")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        failures = [s for s in seen if s[0] != 200]
        assert failures == [], failures[:5]
        order = [v for _, v in seen]
        first_v2 = order.index("2.0.0")
        assert "1.0.0" in order[:first_v2] and "1.0.0" in order[first_v2:]
        assert len(seen) > 50
        actions = [e["action"] for e in registry.admin.history("scorer")]
        assert actions.count("rollback") == 1 and "archive" in actions
    finally:
        server.stop()


@pytest.mark.slow
def test_engine_refuses_a_digest_outside_its_stage_policy(
        registry: Registry, baton_env: dict[str, str], tmp_path: Path) -> None:
    archive = scorer(tmp_path, "3.0.0", 4.0)
    ds = registry.client("dana")
    ds.push(archive)
    ds.promote("scorer@3.0.0", "validated")
    r = run_baton("serve", "scorer@3.0.0", "--registry", registry.url, "--port",
                  str(free_port()), env=engine_env(baton_env, registry), timeout=120)
    assert r.returncode == 6, r.stderr
    assert "STAGE_NOT_ALLOWED" in r.stderr
    assert "is validated by its latest signed decision; this engine serves only production" \
        in r.stderr


@pytest.mark.slow
def test_tampered_blob_is_never_served(registry: Registry, baton_env: dict[str, str],
                                       tmp_path: Path) -> None:
    v1, v2 = scorer(tmp_path, "1.0.0", 2.0), scorer(tmp_path, "2.0.0", 3.0)
    registry.release(v1, "1.0.0")
    server = serve_registry(registry, baton_env)
    try:
        server.wait_ready()
        wait_for(lambda: version_of(server) == "1.0.0")
        ds, op, ap = (registry.client(u) for u in ("dana", "olga", "abe"))
        info, _ = ds.push(v2)
        ds.promote("scorer@2.0.0", "validated")
        op.promote("scorer@2.0.0", "staging")
        ap.decide("scorer@2.0.0", "approve", "ok")
        hexd = info["digest"].split(":")[1]
        blob = registry.home / "registry" / "blobs" / hexd[:2] / f"{hexd}.baton"
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF  # flip one byte of stored content
        blob.write_bytes(bytes(data))
        op.promote("scorer@2.0.0", "production", "release")
        wait_for(lambda: info["digest"] in server.client.get("/v1/models").json()["source"][
            "failed"])
        reason = server.client.get("/v1/models").json()["source"]["failed"][info["digest"]]
        assert "BLOB_CORRUPT" in reason or "altered" in reason
        assert version_of(server) == "1.0.0"
    finally:
        server.stop()


def test_canary_splits_and_shadow_compares(serve: Callable[..., Server],
                                           tmp_path: Path) -> None:
    live = scorer(tmp_path, "1.0.0", 2.0).parent.parent / "scorer-1.0.0"
    cand = scorer(tmp_path, "2.0.0", 3.0).parent.parent / "scorer-2.0.0"
    server = serve([live], "--canary", f"{cand}=30")
    wait_for(lambda: server.client.get("/v1/models").json()["models"][0]["traffic"][
        "candidate_ready"])
    versions = collections.Counter(version_of(server) for _ in range(300))
    assert set(versions) == {"1.0.0", "2.0.0"}
    assert 40 <= versions["2.0.0"] <= 140, versions  # ~30% of 300, loosely
    pinned = server.client.post("/v2/models/scorer/versions/2.0.0/infer", json={"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
    assert pinned.json()["model_version"] == "2.0.0"
    traffic = server.client.get("/v1/models").json()["models"][0]["traffic"]
    assert traffic["mode"] == "canary" and traffic["to_candidate"] == versions["2.0.0"]

    shadowed = serve([live], "--shadow", str(cand))
    wait_for(lambda: shadowed.model("scorer")["parameters"]["traffic"]["candidate_ready"])
    for i in range(20):
        resp = shadowed.client.post("/v1/models/scorer/predict", json=[{"x": float(i)}])
        assert resp.json()["predictions"][0]["v"] == "1.0.0"  # never the candidate's output
    # A copy is counted in ``requests`` when it is sent, in ``compared_rows`` once answered.
    wait_for(lambda: shadowed.model("scorer")["parameters"]["traffic"]["compared_rows"] +
             shadowed.model("scorer")["parameters"]["traffic"]["candidate_errors"] >= 20)
    t = shadowed.model("scorer")["parameters"]["traffic"]
    assert t["mode"] == "shadow" and t["candidate"] == "2.0.0" and t["requests"] == 20
    assert t["compared_rows"] == 20 and t["mismatched_rows"] == 20  # 3x differs from 2x
    assert t["max_abs_diff"] == 19.0 and t["candidate_errors"] == 0
