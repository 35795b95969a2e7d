"""/metrics on a real engine, read back by the Prometheus client parser and by a real
Prometheus server scraping it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, free_port
from tests.serving.test_registry_serving import wait_for
from tests.serving.test_stats_roles import scorer_dir, stats


def samples(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = server.client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(data: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    hits = [v for (n, ls), v in data.items() if n == name and want <= set(ls)]
    assert hits, f"no sample {name} {labels}"
    return sum(hits)


def test_metrics_count_traffic_errors_by_stage_and_workers(
        serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle])
    post = lambda body: server.client.post("/v1/models/chaos/predict", json=body)  # noqa: E731
    for i in range(5):
        assert post([{"action": "ok", "x": i}, {"action": "ok", "x": 1}]).status_code == 200
    assert post([{"action": "ok", "x": "one"}]).status_code == 422
    assert post([{"action": "raise", "x": 1}]).status_code == 500
    assert post([{"action": "bad_output", "x": 1}]).status_code == 500
    assert server.client.post("/v1/models/chaos/predict", content=b"[{").status_code == 400
    data = samples(server)
    base = {"model": "chaos", "version": "1.0.0"}
    assert value(data, "baton_requests_total", **base, endpoint="predict", status="200") == 5
    assert value(data, "baton_records_total", **base, source="predict") == 10
    assert value(data, "baton_errors_total", **base, stage="contract",
                 code="CONTRACT_VIOLATION") == 1
    assert value(data, "baton_errors_total", **base, stage="model", code="MODEL_ERROR") == 1
    assert value(data, "baton_errors_total", **base, stage="output",
                 code="OUTPUT_CONTRACT_VIOLATION") == 1
    assert value(data, "baton_errors_total", **base, stage="decode", code="INVALID_JSON") == 1
    assert value(data, "baton_stage_duration_seconds_count", **base, stage="total") == 9
    assert value(data, "baton_stage_duration_seconds_count", **base, stage="model") >= 7
    assert value(data, "baton_batch_rows_sum", **base) >= 10
    assert value(data, "baton_workers_alive", **base) == 1
    assert value(data, "baton_worker_resident_memory_bytes", **base, slot="0") > 1_000_000
    assert value(data, "baton_worker_restarts_total", **base) == 0
    # A worker forked from its template starts with no CPU time of its own (its imports were
    # the template's), and the kernel counts in 10 ms ticks: score until it has used some.
    deadline = time.monotonic() + 60
    batch = [{"action": "ok", "x": i % 50} for i in range(256)]
    while value(samples(server), "baton_worker_cpu_seconds_total", **base, slot="0") <= 0:
        assert time.monotonic() < deadline, "the worker's CPU time stayed 0 in 60 s of scoring"
        assert post(batch).status_code == 200

    assert post([{"action": "crash", "x": 1}]).status_code == 503
    deadline = time.monotonic() + 30
    while post([{"action": "ok", "x": 1}]).status_code != 200:
        assert time.monotonic() < deadline, "the crashed worker was not replaced in 30 s"
        time.sleep(0.05)
    data = samples(server)
    assert value(data, "baton_worker_restarts_total", **base) == 1
    assert value(data, "baton_errors_total", **base, stage="model", code="WORKER_CRASHED") == 1


@pytest.mark.slow
def test_metrics_and_stats_describe_the_same_versions_and_workers(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    """/metrics and /v1/stats are rendered from the same snapshots: the live version, its
    canary and its shadow each appear in both, with the same workers sampled."""
    live = scorer_dir(tmp_path, "1.0.0", 2.0)
    canary = scorer_dir(tmp_path, "2.0.0", 3.0)
    shadow = scorer_dir(tmp_path, "3.0.0", 5.0)
    server = serve([live], "--canary", f"{canary}=30", "--shadow", str(shadow))
    wait_for(lambda: len(stats(server)) == 3 and all(m["ready"] for m in stats(server)))

    models = stats(server)
    data = samples(server)
    listed = {(dict(ls)["model"], dict(ls)["version"])
              for (name, ls) in data if name == "baton_model_ready"}
    assert listed == {("scorer", "1.0.0"), ("scorer", "2.0.0"), ("scorer", "3.0.0")}
    assert listed == {(m["name"], m["version"]) for m in models}
    for m in models:
        lv = {"model": m["name"], "version": m["version"]}
        assert value(data, "baton_model_ready", **lv) == 1
        assert value(data, "baton_queue_rows", **lv) == m["queued_rows"] == 0
        assert value(data, "baton_worker_restarts_total", **lv) == m["restarts"] == 0
        assert value(data, "baton_workers_alive", **lv) == len(m["workers"]) == 1
        [worker] = m["workers"]
        slot = str(worker["slot"])
        assert worker["rss_bytes"] > 1_000_000
        assert value(data, "baton_worker_resident_memory_bytes", **lv, slot=slot) > 1_000_000
        assert value(data, "baton_worker_cpu_seconds_total", **lv, slot=slot) >= \
            worker["cpu_seconds"]  # read after /v1/stats, from the same process


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A real Prometheus server (Debian package) writing into tmp_path."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run scripts/ensure-packages.sh (make test does)"
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                          f"  - job_name: baton\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


def test_a_real_prometheus_scrapes_the_engine(serve: Callable[..., Server], chaos_bundle: Path,
                                              prometheus: Callable[[str], str]) -> None:
    server = serve([chaos_bundle])
    for i in range(7):
        server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": i}])
    url = prometheus(f"127.0.0.1:{server.port}")
    query = 'baton_requests_total{model="chaos",endpoint="predict",status="200"}'
    deadline = time.monotonic() + 60
    result: list = []
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                body = client.get(f"{url}/api/v1/query", params={"query": query}).json()
                result = body["data"]["result"]
                if result:
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        assert result, "Prometheus never scraped the engine"
        assert float(result[0]["value"][1]) == 7.0
        up = client.get(f"{url}/api/v1/query", params={"query": "up"}).json()
        assert up["data"]["result"][0]["value"][1] == "1"
