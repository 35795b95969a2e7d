"""Fixtures for the stream tests: an event loop in a thread, Tansu, and one kit per broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.streams.brokers import Tansu, require_service
from tests.streams.kits import (
    AmqpKit,
    FileKit,
    KafkaKit,
    Kit,
    MqttKit,
    NatsKit,
    RedisKit,
)

T = TypeVar("T")
SCHEMES = ["file", "redis", "nats", "amqp", "mqtt", "kafka"]
BROKERS = SCHEMES[1:]


class Aio:
    """One event loop in a thread: sync tests run coroutines on it, clients stay bound."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:  # let clients finish closing their transports
            await asyncio.sleep(0.05)
            await self.loop.shutdown_default_executor()

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def aio() -> Iterator[Aio]:
    runner = Aio()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """The Kafka-compatible broker for the whole session, on a free port."""
    broker = Tansu(tmp_path_factory.mktemp("tansu")).start()
    yield broker
    broker.stop()


def make_kit(scheme: str, tmp_path: Path, tansu: Tansu) -> Kit:
    if scheme == "file":
        return FileKit(tmp_path)
    if scheme == "kafka":
        return KafkaKit(tansu.port)
    require_service(scheme)
    kits: dict[str, type[Kit]] = {"redis": RedisKit, "nats": NatsKit, "amqp": AmqpKit,
                                  "mqtt": MqttKit}
    return kits[scheme]()


@pytest.fixture(params=SCHEMES)
def broker(request: pytest.FixtureRequest, tmp_path: Path, tansu: Tansu,
           aio: Aio) -> Iterator[Kit]:
    """Each connector in turn, with fresh stream names and a test-side publisher/reader."""
    kit = make_kit(request.param, tmp_path, tansu)
    yield kit
    aio.run(kit.cleanup())
