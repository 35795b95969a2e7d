"""Fixtures for the stream tests: an event loop in a thread, Tansu, and one kit per broker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import Server, write_bundle
from tests.streams.brokers import Tansu, require_service
from tests.streams.engines import (
    CONTRACT,
    MAX_BATCH,
    MODEL,
    Engines,
    Tidy,
    answers,
    sigkill,
    wait_until,
)
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


# -- engines bound to streams (helpers in engines.py) -------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "scorer", name="scorer",
                        code=MODEL, contract=CONTRACT)


@pytest.fixture
def engines(bundle: Path, baton_env: dict[str, str]) -> Iterator[Engines]:
    """Factory: ``engines(input_url, output_url, dead_letter_url, group, sleep)`` starts a
    ready `baton serve` bound to those streams (``broker_down=True``: only live, since an
    engine that cannot reach its broker is not ready); whatever is still running at the end
    of the test (a failed one included) is killed by PID."""
    started: list[Server] = []

    def start(inp: str, out: str, dead: str, group: str, sleep: float,
              broker_down: bool = False, **env: str) -> Server:
        server = Server([bundle], {**baton_env, "BATON_TEST_SLEEP": str(sleep), **env},
                        ["--input", inp, "--output", out, "--dead-letter", dead,
                         "--group", group, "--max-batch", str(MAX_BATCH)])
        started.append(server)
        if broker_down:
            wait_until(lambda: answers(server, "/v2/health/live"), "the engine live", server)
        else:
            server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            sigkill(server)
        server.stop()


@pytest.fixture
def tidy(aio: Aio) -> Iterator[Tidy]:
    """Register ``async`` clean-ups (delete test streams, close readers) run at teardown,
    pass or fail; best effort: a broker that is gone by then is not an error."""
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
    yield jobs.append
    for job in reversed(jobs):
        with contextlib.suppress(Exception):
            aio.run(job(), timeout=30)
