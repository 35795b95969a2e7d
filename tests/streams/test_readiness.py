"""``/v2/health/ready`` reflects stream bindings: an engine whose input broker cannot be
reached is not ready (503, naming the binding and the reason), and is ready once the broker
answers — so an orchestrator takes it out of service rather than count it as working."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.streams.brokers import PrivateRedis
from tests.streams.engines import wait_until


@pytest.fixture
def redis_later(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis with a port chosen now and started only when the test says so."""
    broker = PrivateRedis(tmp_path / "redis")
    yield broker
    broker.stop()


def test_an_engine_whose_broker_is_unreachable_is_not_ready_until_it_answers(
        bundle: Path, baton_env: dict[str, str], redis_later: PrivateRedis) -> None:
    url = f"redis://127.0.0.1:{redis_later.port}"
    server = Server([bundle], baton_env, ["--input", f"{url}/in", "--output", f"{url}/out",
                                          "--dead-letter", f"{url}/dead"])
    try:
        def answer() -> httpx.Response | None:
            try:
                return server.client.get("/v2/health/ready")
            except httpx.TransportError:
                return None

        def reasons() -> list[str]:
            r = answer()
            return list(r.json().get("streams", [])) if r is not None and \
                r.status_code == 503 else []

        # Not ready from the start ("opening the streams"), then the refusal once the first
        # connection has failed.
        wait_until(lambda: any("refused" in why for why in reasons()),
                   "readiness naming the stream and the refusal", server)
        [why] = reasons()
        assert why.startswith(f"{url}/in: ") and "refused" in why, why
        assert server.client.get("/v2/health/live").status_code == 200  # alive, not ready
        redis_later.start()
        wait_until(lambda: (r := answer()) is not None and r.status_code == 200,
                   "ready once the broker answers", server)
    finally:
        assert server.stop() == 0
