"""``baton serve --ray`` on a real two-node Ray cluster: replicas on both nodes, the same
answers and errors as one machine, tokens, every replica in ``baton status``, ``/metrics``
and the dashboard, and a node SIGKILLed under load. Versions rolled under load and the
autoscaler: test_follow_ray.py.

Each engine is a real ``baton serve --ray`` process (the driver); the tests reach the models
through Ray Serve's proxy on the head (``--ray-proxy head-only``: two nodes on one machine
cannot both listen on one port).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from baton.cluster.local import LocalCluster
from tests.conftest import Server, run_baton, stop_process
from tests.dashboard.test_registry_view import ASKED, give_engine_token

if TYPE_CHECKING:
    from playwright.sync_api import Page

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "penguins" / "bundle"
ROWS = json.loads((EXAMPLE / "samples" / "input.json").read_text())
EXPECTED = json.loads((EXAMPLE / "samples" / "expected.json").read_text())

pytestmark = pytest.mark.timeout(900)


def cluster_serve(bundle: Path, cluster: LocalCluster, env: dict[str, str],
                  *args: str) -> Server:
    server = Server([bundle], env, ["--ray", cluster.address, "--ray-proxy", "head-only",
                                    *args])
    server.wait_ready(timeout=300)  # one replica serves: the proxy answers
    wait_for(lambda: "Baton is serving on the Ray cluster" in server.output() or
             server.proc.poll() is not None, "every replica running (the driver says so)", 300)
    assert server.proc.poll() is None, server.output()
    return server


def stop(server: Server) -> None:
    """SIGTERM the driver (it removes the application) and close what the test held."""
    stop_process(server.proc, grace=120)
    server.client.close()
    server.log.close()


def replicas(server: Server, model: str = "penguins") -> list[dict[str, Any]]:
    info = server.client.get("/v1/cluster").json()
    return [r for r in info["deployments"][f"model-{model}"]["replicas"]
            if r["state"] == "RUNNING"]


def wait_for(cond: Any, what: str, timeout: float = 180.0) -> float:
    """Seconds until ``cond()`` holds (fails after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if cond():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@dataclass
class Load:
    """Clients predicting without pause; every answer kept with its time."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    clients: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/models/penguins/predict", json=ROWS[:3])
                    version = r.json().get("model_version", "") if r.status_code == 200 else ""
                    self.answers.append((time.monotonic(), r.status_code, version))
                except httpx.TransportError as exc:
                    self.answers.append((time.monotonic(), 0, type(exc).__name__))

    def failed(self) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[1] != 200]

    def count(self) -> int:
        return len(self.answers)

    def last_ok(self, n: int) -> bool:
        tail = list(self.answers)[-n:]
        return len(tail) == n and all(a[1] == 200 for a in tail)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory, baton_env: dict[str, str]
           ) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    added = run_baton("engine-tokens", "add", path, "--name", "caller", "--scope", "infer",
                      "--scope", "read", env=baton_env)
    assert added.returncode == 0, added.stderr
    token = next(w for w in added.stdout.split() if len(w) > 30)
    return path, {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def engine(ray_cluster: LocalCluster, baton_env: dict[str, str],
           tokens: tuple[Path, dict[str, str]]) -> Iterator[Server]:
    server = cluster_serve(EXAMPLE, ray_cluster, baton_env, "--replicas", "2",
                           "--tokens", str(tokens[0]))
    server.client.headers.update(tokens[1])
    try:
        yield server
    finally:
        stop(server)


def test_replicas_land_on_both_nodes(engine: Server) -> None:
    running = replicas(engine)
    assert len(running) == 2
    assert len({r["node"] for r in running}) == 2, running
    assert "Baton is serving on the Ray cluster" in engine.output()


def test_answers_and_errors_are_one_machines(engine: Server) -> None:
    r = engine.client.post("/v1/models/penguins/predict", json=ROWS)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["prediction"] for p in got] == [e["prediction"] for e in EXPECTED]
    for p, e in zip(got, EXPECTED, strict=True):
        for key in e:
            if key.startswith("proba_"):
                assert p[key] == pytest.approx(e[key], abs=1e-9)
    bad = engine.client.post("/v1/models/penguins/predict",
                             json=[{**ROWS[0], "bill_length_mm": "long"}])
    assert bad.status_code == 422
    assert "bill_length_mm" in bad.text
    v2 = engine.client.get("/v2/models/penguins")
    assert v2.status_code == 200 and v2.json()["name"] == "penguins"
    missing = engine.client.get("/v2/models/nope")
    assert missing.status_code == 404 and "penguins" in missing.text
    listed = engine.client.get("/v1/models").json()["models"]
    assert [(m["model"], m["version"], m["ready"]) for m in listed] == [
        ("penguins", "1.0.0", True)]


def test_a_token_is_needed(engine: Server) -> None:
    anonymous = httpx.post(f"{engine.url}/v1/models/penguins/predict", json=ROWS[:1])
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{engine.url}/v2/health/live").status_code == 200


def test_status_shows_every_replica_and_node(engine: Server, baton_env: dict[str, str],
                                             tokens: tuple[Path, dict[str, str]]) -> None:
    """Each replica posts its engine's figures: /v1/stats has one entry per replica, with
    its node, and ``baton status`` a row each."""
    for _ in range(20):
        assert engine.client.post("/v1/models/penguins/predict", json=ROWS[:2]).status_code \
            == 200

    def entries() -> list[dict[str, Any]]:
        return list(engine.client.get("/v1/stats").json()["models"])

    wait_for(lambda: len(entries()) == 2 and
             sum(e["metrics"]["requests"] for e in entries()) >= 20, "every replica posted")
    stats = entries()
    assert {e["node"] for e in stats} == {r["node"] for r in replicas(engine)}
    assert len({e["node"] for e in stats}) == 2
    assert all(e["name"] == "penguins" and e["ready"] for e in stats)
    assert {e["replica"] for e in stats} == {r["replica"] for r in replicas(engine)}
    assert all(r["version"] == "1.0.0" and r["ready"] for r in replicas(engine))
    token = tokens[1]["authorization"].split()[1]
    shown = run_baton("status", "--url", engine.url, "--token", token, env=baton_env)
    assert shown.returncode == 0, shown.stderr
    for e in stats:
        assert e["replica"] in shown.stdout and e["node"][:12] in shown.stdout
    assert "replicas" in shown.stdout


def requests_by_place(server: Server) -> Counter[tuple[str, str]]:
    """Requests answered per (replica, node), as the cluster's ``/metrics`` labels them."""
    counts: Counter[tuple[str, str]] = Counter()
    text = server.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "baton_requests_total":
                counts[(s.labels["replica"], s.labels["node"])] += int(s.value)
    return counts


def test_metrics_and_the_dashboard_show_every_replica(
        engine: Server, tokens: tuple[Path, dict[str, str]], page: Page,
        expected_console: list[str], shot: Callable[..., Path]) -> None:
    """``/metrics`` holds each replica's samples, labelled with its replica and node; the
    dashboard at ``/ui`` shows the model once, with what its replicas counted together, and
    a row per replica with its node."""
    from playwright.sync_api import expect

    running = replicas(engine)
    places = {(r["replica"], r["node"]) for r in running}
    before = sum(requests_by_place(engine).values())
    for _ in range(40):  # Ray spreads them: each replica answers some
        assert engine.client.post("/v1/models/penguins/predict", json=ROWS[:2]).status_code \
            == 200
    wait_for(lambda: set(requests_by_place(engine)) == places
             and sum(requests_by_place(engine).values()) >= before + 40,
             "every replica's requests in /metrics", 30)
    counted = requests_by_place(engine)
    assert len({node for _, node in counted}) == 2, counted

    expected_console += ASKED  # the page asks for the engine's token first
    page.goto(f"{engine.url}/ui")
    give_engine_token(page, tokens[1]["authorization"].split()[1])
    row = page.get_by_test_id("model-row-penguins")
    expect(row.get_by_test_id("health")).to_have_text("ready")
    expect(page.locator("#models-body tr")).to_have_count(1)
    expect(page.get_by_test_id("replicas-summary")).to_have_text(
        "2 replicas on 2 nodes of a Ray cluster")
    for replica, node in places:
        shown = page.get_by_test_id(f"replica-row-{replica}")
        expect(shown).to_have_attribute("data-node", node)
        expect(shown.get_by_test_id("replica-node")).to_contain_text(node[:12])
    # The model's total is every replica's: what /metrics counted, or more since.
    total = page.get_by_test_id("figure-total")
    deadline = time.monotonic() + 30
    while float(total.get_attribute("data-value") or 0) < sum(counted.values()):
        assert time.monotonic() < deadline, (total.get_attribute("data-value"), counted)
        page.wait_for_timeout(250)
    shot(page, "cluster-dashboard")


def test_a_node_lost_under_load(engine: Server, ray_cluster: LocalCluster,
                                tokens: tuple[Path, dict[str, str]]) -> None:
    """SIGKILL every process of the worker node at once: requests fail for a bounded blip,
    then all succeed on the head's replicas while Ray starts replacements."""
    worker = ray_cluster.nodes[1]
    assert len({r["node"] for r in replicas(engine)}) == 2
    with Load(engine.url, dict(tokens[1])) as load:
        wait_for(lambda: load.count() > 20, "answers before the loss")
        killed = time.monotonic()
        worker.kill()
        recovered = wait_for(lambda: load.last_ok(50), "50 answers in a row after the loss")
        # Ray noticed: both replicas run again, on the one node left.
        replaced = wait_for(lambda: len(replicas(engine)) == 2 and
                            len({r["node"] for r in replicas(engine)}) == 1,
                            "a replacement replica on the surviving node", 300)
        before = load.count()
        wait_for(lambda: load.count() > before + 100, "100 more answers")
    failed = [a for a in load.answers if a[1] != 200 and a[0] >= killed]
    blip = (max(a[0] for a in failed) - killed) if failed else 0.0
    after = [a for a in load.answers if a[0] > killed + blip]
    print(f"\nnode SIGKILLed under load: {len(failed)} of {len(load.answers)} requests "
          f"failed, the last {blip:.2f} s after the kill; 50 in a row succeeded "
          f"{recovered:.1f} s after it; a replacement replica ran "
          f"{recovered + replaced:.1f} s after it")
    assert all(a[1] == 200 for a in after[-100:])
    ray_cluster.nodes.remove(worker)
    ray_cluster.add_node()  # the session's other tests keep two nodes
    wait_for(lambda: len({r["node"] for r in replicas(engine)}) >= 1, "replicas serving")
