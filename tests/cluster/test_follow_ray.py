"""``baton serve --ray --registry``: the driver follows the registry's production stage and
the cluster rolls, under load, with no failed request: 1.0.0 released, then 2.0.0, then a
rollback to 1.0.0; callers authenticate with their registry tokens at the ingress; a version
the engine may not serve (only in staging) never reaches the cluster. The model autoscales
meanwhile: one replica at rest, a second under the load, one again after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from baton.cluster.local import LocalCluster
from tests.conftest import Server
from tests.serving.test_registry_serving import (
    Registry,
    caller,
    engine_env,
    running_registry,
    scorer,
)

from .test_serve_ray import replicas, stop, wait_for

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def registry(tmp_path: Path, baton_env: dict[str, str]) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry-home", baton_env) as reg:
        yield reg


def answer(client: httpx.Client) -> tuple[int, str]:
    try:
        r = client.post("/v1/models/scorer/predict", json=[{"x": 2.0}])
    except httpx.TransportError as exc:
        return 0, type(exc).__name__
    body = r.json()
    return r.status_code, (body["predictions"][0]["v"] if r.status_code == 200
                           else str(body.get("code", "")))


def test_the_cluster_follows_promotions_and_rollbacks_under_load(
        registry: Registry, ray_cluster: LocalCluster, baton_env: dict[str, str],
        tmp_path: Path) -> None:
    v1, v2 = scorer(tmp_path, "1.0.0", 2.0), scorer(tmp_path, "2.0.0", 3.0)
    registry.release(v1, "1.0.0")
    server = Server([], engine_env(baton_env, registry),
                    ["--registry", registry.url, "--poll", "0.5", "--ray", ray_cluster.address,
                     "--ray-proxy", "head-only", "--replicas", "1", "--max-replicas", "2",
                     "--target-ongoing", "1", "--upscale-delay", "2",
                     "--downscale-delay", "5"])
    server.client.headers.update(caller(registry))
    try:
        server.wait_ready(timeout=300)
        wait_for(lambda: answer(server.client)[1] == "1.0.0", "1.0.0 served", 300)
        assert httpx.post(f"{server.url}/v1/models/scorer/predict",
                          json=[{"x": 1.0}]).status_code == 401
        seen: list[tuple[int, str]] = []
        halt = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=60,
                              headers=caller(registry)) as client:
                while not halt.is_set():
                    seen.append(answer(client))

        peak: list[tuple[float, int]] = []

        def watch() -> None:  # the replicas running, as the autoscaler moves them
            while not halt.is_set():
                peak.append((time.monotonic(), len(replicas(server, "scorer"))))
                time.sleep(0.5)

        assert len(replicas(server, "scorer")) == 1
        loaded = time.monotonic()
        threads = [threading.Thread(target=load) for _ in range(6)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(seen) > 20, "answers from 1.0.0")
            registry.release(v2, "2.0.0")
            wait_for(lambda: seen[-1][1] == "2.0.0", "2.0.0 served", 300)
            # Only staging: an engine serving production must never take it.
            staged = scorer(tmp_path, "3.0.0", 4.0)
            ds = registry.client("dana")
            ds.push(staged)
            ds.promote("scorer@3.0.0", "validated")
            registry.client("olga").promote("scorer@3.0.0", "staging")
            registry.client("olga").promote("scorer@1.0.0", "production", "rollback")
            wait_for(lambda: seen[-1][1] == "1.0.0", "1.0.0 served again", 300)
            count = len(seen)
            wait_for(lambda: len(seen) > count + 50, "50 more answers")
            wait_for(lambda: any(n == 2 for _, n in peak), "a second replica under load", 300)
        finally:
            halt.set()
            for t in threads:
                t.join(60)
        down = wait_for(lambda: len(replicas(server, "scorer")) == 1, "one replica again", 300)
        up = next(t for t, n in peak if n == 2) - loaded
        failures = [s for s in seen if s[0] != 200]
        order = [v for _, v in seen]
        first_v2 = order.index("2.0.0")
        print(f"\nfollowing the registry on the cluster: {len(seen)} requests, "
              f"{len(failures)} failed, through 1.0.0 -> 2.0.0 -> rollback to 1.0.0; "
              f"autoscaler: a second replica {up:.1f} s into the load, one again "
              f"{down:.1f} s after it")
        assert failures == [], failures[:5]
        assert "1.0.0" in order[:first_v2] and order[-1] == "1.0.0"
        assert "3.0.0" not in order
        models = server.client.get("/v1/models").json()["models"]
        assert [(m["model"], m["version"]) for m in models] == [("scorer", "1.0.0")]
    finally:
        stop(server)
