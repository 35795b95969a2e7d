"""Faults end to end: a real `baton serve` bound to real brokers, killed, cut off, refused.

What a user observes decides: every input key ends with an output or a dead letter (a loss
fails the test), dead letters say why. Duplicates are at-least-once: after a kill, at most
the records the engine held unacknowledged (its in-flight window) may come out again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.streams.base import redact_url
from baton.streams.binding import StreamBinding
from tests.conftest import Server, free_port, records_contract, write_bundle
from tests.streams.brokers import (
    PrivateMosquitto,
    PrivateNats,
    PrivateRedis,
    Tansu,
    TcpProxy,
    require_service,
)
from tests.streams.conftest import BROKERS, SCHEMES, Aio, make_kit
from tests.streams.kits import AmqpKit, Item, KafkaKit, Kit, MqttKit, NatsKit, RedisKit, suffix

MODEL = '''
import os, time

class Model:
    def predict(self, inputs):
        time.sleep(float(os.environ.get("BATON_TEST_SLEEP", "0")))  # to kill it mid-stream
        return {"score": [min(1.0, a / 1000.0) for a in inputs["amount"]]}
'''

CONTRACT = records_contract(
    inputs={"amount": {"type": "float", "min": 0.0},
            "country": {"type": "string", "categories": ["DE", "FR", "US"]},
            "age": {"type": "integer", "nullable": True}},
    outputs={"score": "float"})


#: The engines' micro-batch size (``--max-batch``).
MAX_BATCH = 20
#: Records an engine holds read and not yet acknowledged, at most: the pipeline's
#: micro-batches in flight (its default) of MAX_BATCH each. A kill may deliver those again,
#: and nothing else.
WINDOW = StreamBinding("m", "in", "out", "dead").in_flight * MAX_BATCH


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "scorer", name="scorer",
                        code=MODEL, contract=CONTRACT)


def make_inputs(n: int, *, line_keys: bool = False) -> tuple[list[Item], dict[str, bytes]]:
    """``n`` keyed records, one in 12 of them bad in one of four ways; and the bad ones.

    ``line_keys``: keyed by line number, as the file connector keys a record without a key
    field (a line that is not JSON has none)."""
    items: list[Item] = []
    bad: dict[str, bytes] = {}
    for i in range(n):
        key = str(i + 1) if line_keys else f"r{i:05d}"
        good = {"amount": float(i % 700), "country": "DEFRUS"[i % 3 * 2:][:2],
                "age": None if i % 5 == 0 else 20 + i % 60}
        broken = None if i % 12 != 5 else [
            b"\xff\xfe\x00 not JSON, not even UTF-8",
            json.dumps({**good, "amount": "a lot"}).encode(),       # wrong type
            json.dumps({"amount": 3.0, "age": 30}).encode(),       # missing field
            json.dumps({**good, "country": "XX"}).encode()][i // 12 % 4]
        value = broken if broken is not None else json.dumps(good).encode()
        items.append((key, value))
        if broken is not None:
            bad[key] = broken
    return items, bad


class Outcome:
    """Outputs and dead letters read back from the broker, as any consumer would."""

    def __init__(self, aio: Aio, kit: Kit, output: str, dead: str) -> None:
        self.aio = aio
        self.out, self.dead = kit.reader(output), kit.reader(dead)

    def start(self) -> Outcome:
        self.aio.run(self.out.start())
        self.aio.run(self.dead.start())
        return self

    def poll(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bodies = []
        for reader in (self.out, self.dead):
            items = self.aio.run(reader.poll())
            parsed = [json.loads(v) for _, v in items]
            for (key, _), body in zip(items, parsed, strict=True):
                assert key == body["key"], f"message key {key!r} != record key {body['key']!r}"
            bodies.append(parsed)
        return bodies[0], bodies[1]

    def seen(self) -> set[str]:
        out, dead = self.poll()
        return {b["key"] for b in out} | {b["key"] for b in dead}

    async def close(self) -> None:
        await self.out.close()
        await self.dead.close()


def wait_until(check: Callable[[], bool], what: str, server: Server | None = None,
               patience: float = 90) -> None:
    """Poll ``check``; a deadline only turns a hang into a failure, it asserts no speed."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if check():
            return
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"baton serve exited while waiting for {what}:\n"
                                 f"{server.output()[-4000:]}")
        time.sleep(0.02)
    tail = f":\n{server.output()[-4000:]}" if server is not None else ""
    raise AssertionError(f"{what}: not reached within {patience:.0f}s{tail}")


Engines = Callable[..., Server]


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
            wait_until(lambda: _answers(server, "/v2/health/live"), "the engine live", server)
        else:
            server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            sigkill(server)
        server.stop()


def _answers(server: Server, path: str) -> bool:
    try:
        return server.client.get(path).status_code == 200
    except httpx.TransportError:
        return False


Tidy = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@pytest.fixture
def tidy(aio: Aio) -> Iterator[Tidy]:
    """Register ``async`` clean-ups (delete test streams, close readers) run at teardown,
    pass or fail; best effort: a broker that is gone by then is not an error."""
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
    yield jobs.append
    for job in reversed(jobs):
        with contextlib.suppress(Exception):
            aio.run(job(), timeout=30)


def urls(kit: Kit, streams: tuple[str, str, str]) -> tuple[str, str, str]:
    return kit.url(streams[0]), kit.url(streams[1]), kit.url(streams[2])


def sigkill(server: Server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)  # the engine; its workers exit on EOF
    server.proc.wait()


def stream_stats(server: Server) -> dict[str, Any]:
    streams: list[dict[str, Any]] = server.client.get("/v1/models").json()["streams"]
    return streams[0]


def check_complete(outcome: Outcome, items: list[Item], bad: dict[str, bytes],
                   digest: str) -> tuple[int, str]:
    """Every key accounted for exactly as it should be; returns the number of duplicates
    (outputs and dead letters beyond the first of each key) and a summary."""
    out, dead = outcome.poll()
    out_keys, dead_keys = Counter(b["key"] for b in out), Counter(b["key"] for b in dead)
    keys = [k for k, _ in items]
    lost = [k for k in keys if k not in out_keys and k not in dead_keys]
    assert not lost, f"{len(lost)} record(s) lost, e.g. {lost[:5]}"
    assert set(dead_keys) == set(bad), "dead letters must be exactly the bad records"
    assert set(out_keys) == set(keys) - set(bad)
    for letter in dead:
        original = bad[letter["key"]]
        assert letter["stage"] in ("decode", "contract"), letter
        assert letter["code"] and letter["message"], letter
        assert letter["digest"] == digest
        payload = (base64.b64decode(letter["payload"])
                   if letter["payload_encoding"] == "base64"
                   else letter["payload"].encode())
        assert payload == original, letter
    for body in out:
        assert body["output"]["score"] >= 0 and body["model"] == "scorer"
    dups = sum(c - 1 for c in out_keys.values()) + sum(c - 1 for c in dead_keys.values())
    return dups, f"{len(items)} records, {len(bad)} dead letters, {dups} duplicate(s)"


# -- SIGKILL mid-stream ------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_engine_killed_mid_stream_three_times_loses_nothing_and_repeats_at_most_its_window(
        scheme: str, tmp_path: Path, tansu: Tansu, aio: Aio, engines: Engines,
        tidy: Tidy) -> None:
    kit = make_kit(scheme, tmp_path, tansu)
    tidy(kit.cleanup)
    # Mosquitto queues at most 1000 messages for a session that is away (its default
    # max_queued_messages), and the engine is away between a kill and its restart.
    n = 900 if scheme == "mqtt" else 1200
    kills = 3
    streams = (kit.fresh(), kit.fresh(), kit.fresh())
    group = f"faults-{suffix()}"
    aio.run(kit.prepare(kit.url(streams[0]), group))
    outcome = Outcome(aio, kit, streams[1], streams[2]).start()
    tidy(outcome.close)
    items, bad = make_inputs(n, line_keys=scheme == "file")
    aio.run(kit.publish(streams[0], items))

    progress_at_kill = []
    for _ in range(kills):
        server = engines(*urls(kit, streams), group, sleep=0.01)
        # Each run does some work (a fifth of the records), then dies without warning.
        wait_until(lambda s=server: stream_stats(s)["consumed"] >= n // 5,
                   f"{n // 5} records consumed", server)
        sigkill(server)
        progress_at_kill.append(len(outcome.seen()))
    server = engines(*urls(kit, streams), group, sleep=0.01)
    wait_until(lambda: len(outcome.seen()) == n, "every record done", server)
    assert stream_stats(server)["input"] == redact_url(kit.url(streams[0]))  # no password
    digest = server.client.get("/v1/models").json()["models"][0]["digest"]
    assert server.stop() == 0

    dups, summary = check_complete(outcome, items, bad, digest)
    print(f"{scheme}: killed at {progress_at_kill} of {n} records done; {summary}; "
          f"{dups / kills:.1f} per kill (window: {WINDOW})")
    assert progress_at_kill[-1] < n, "the last kill did not land mid-stream"
    # Each kill may deliver again what the engine held unacknowledged, once: no more.
    assert dups <= kills * WINDOW, (
        f"{dups} duplicates for {kills} kills: more than the in-flight window of "
        f"{WINDOW} records per kill ({summary})")


# -- the broker goes away while the engine runs ------------------------------------------

@contextmanager
def outage_broker(scheme: str, workdir: Path) -> Iterator[tuple[Kit, Callable[[], None],
                                                                Callable[[], None], str]]:
    """(kit, down, up, how): a broker the test may take down and bring back.

    Redis, NATS and Mosquitto: a private server with durable storage, really restarted.
    RabbitMQ (shared, cannot be restarted under other tests) and Tansu (in memory: a
    restart empties it): every connection dropped and new ones refused by a proxy, the
    broker keeping its state, as a restarted durable broker would.
    """
    private: dict[str, tuple[type[Any], type[Kit]]] = {
        "redis": (PrivateRedis, RedisKit), "nats": (PrivateNats, NatsKit),
        "mqtt": (PrivateMosquitto, MqttKit)}
    if scheme in private:
        server_type, kit_type = private[scheme]
        broker = server_type(workdir / scheme).start()
        try:
            yield kit_type(broker.port), broker.stop, broker.start, "restarted"
        finally:
            broker.stop()
        return
    target = free_port()
    if scheme == "amqp":
        require_service("amqp")
        target = 5672
    proxy = TcpProxy(target)
    tansu = Tansu(workdir / "tansu", port=target, advertised=proxy.port).start() \
        if scheme == "kafka" else None
    proxy.start()
    kit: Kit = AmqpKit(proxy.port, cleanup_port=5672) if scheme == "amqp" \
        else KafkaKit(proxy.port)
    try:
        yield kit, proxy.cut, proxy.restore, "cut off by a proxy"
    finally:
        proxy.cut()
        if tansu is not None:
            tansu.stop()


@pytest.mark.parametrize("scheme", BROKERS)
def test_broker_outage_while_the_engine_runs_loses_nothing(
        scheme: str, tmp_path: Path, aio: Aio, engines: Engines, tidy: Tidy) -> None:
    with outage_broker(scheme, tmp_path) as (kit, down, up, how):
        tidy(kit.cleanup)
        streams = (kit.fresh(), kit.fresh(), kit.fresh())
        group = f"outage-{suffix()}"
        aio.run(kit.prepare(kit.url(streams[0]), group))
        outcome = Outcome(aio, kit, streams[1], streams[2]).start()
        tidy(outcome.close)
        items, bad = make_inputs(400)
        first, second = items[:240], items[240:]
        aio.run(kit.publish(streams[0], first))
        server = engines(*urls(kit, streams), group, sleep=0.03)
        wait_until(lambda: len(outcome.seen()) >= 80, "80 records done", server)
        seen_before = len(outcome.seen())
        down()
        wait_until(lambda: bool(stream_stats(server)["last_error"]),
                   "the engine noticing the outage", server)
        up()
        aio.run(kit.publish(streams[0], second))  # consumed only if the engine reconnected
        wait_until(lambda: len(outcome.seen()) == len(items), "every record done", server)
        digest = server.client.get("/v1/models").json()["models"][0]["digest"]
        assert server.stop() == 0
        _, summary = check_complete(outcome, items, bad, digest)
        print(f"{scheme} {how} with {seen_before} of {len(first)} done; {summary}")


# -- a sink that refuses writes ------------------------------------------------------------

def test_sink_refusing_writes_leaves_input_unacknowledged_and_loses_nothing(
        tmp_path: Path, aio: Aio, engines: Engines) -> None:
    """Scores go to a Redis that stops; input and dead letters stay on the shared one."""
    require_service("redis")
    shared = RedisKit()
    output = PrivateRedis(tmp_path / "out").start()
    out_kit = RedisKit(output.port)
    try:
        inp, out, dead, group = shared.fresh(), out_kit.fresh(), shared.fresh(), "refused"
        items, bad = make_inputs(300)
        aio.run(shared.publish(inp, items))
        out_reader, dead_reader = out_kit.reader(out), shared.reader(dead)
        server = engines(shared.url(inp), out_kit.url(out), shared.url(dead), group, 0.03)
        wait_until(lambda: len(aio.run(out_reader.poll())) >= 60, "60 scores written", server)
        output.stop()
        wait_until(lambda: (stream_stats(server)["last_error"] or "").startswith(
            "write output"), "the engine reporting the refused write", server)
        held = aio.run(shared.pending(inp, group))
        assert held > 0, "the batch whose output was refused must stay unacknowledged"
        assert out_kit.url(out) in stream_stats(server)["last_error"]
        output.start()

        def done() -> set[str]:
            return ({json.loads(v)["key"] for _, v in aio.run(out_reader.poll())}
                    | {json.loads(v)["key"] for _, v in aio.run(dead_reader.poll())})

        wait_until(lambda: len(done()) == len(items), "every record done", server)
        wait_until(lambda: aio.run(shared.pending(inp, group)) == 0, "all acknowledged",
                   server)
        assert server.stop() == 0
        assert set(json.loads(v)["key"] for _, v in dead_reader.items) == set(bad)
        print(f"sink refused with {held} input(s) held unacknowledged; nothing lost")
    finally:
        output.stop()
        aio.run(shared.cleanup())


# -- started while the input broker is down ------------------------------------------------

def test_engine_started_while_its_broker_is_down_retries_with_backoff_then_consumes(
        tmp_path: Path, aio: Aio, engines: Engines, tidy: Tidy) -> None:
    port = free_port()  # Tansu starts here later
    kit = KafkaKit(port)
    streams = (kit.fresh(), kit.fresh(), kit.fresh())
    server = engines(*urls(kit, streams), "late", sleep=0, broker_down=True)
    tansu: Tansu | None = None
    try:
        wait_until(lambda: stream_stats(server)["retries"] >= 3, "three retries", server)
        stats = stream_stats(server)
        assert f"cannot reach the kafka broker at 127.0.0.1:{port}" in stats["last_error"]
        assert stats["consumed"] == 0 and server.proc.poll() is None  # alive, no crash loop
        delays = [float(d) for d in re.findall(r"cannot open input \(retrying in ([\d.]+)s\)",
                                               server.output())]
        assert len(delays) >= 3 and delays[:3] == sorted(delays[:3]) and \
            delays[2] > delays[0], f"no backoff: {delays}"
        assert f"kafka://127.0.0.1:{port}/{streams[0]}" in server.output()

        tansu = Tansu(tmp_path / "tansu", port=port).start()
        outcome = Outcome(aio, kit, streams[1], streams[2]).start()
        tidy(outcome.close)
        items, bad = make_inputs(60)
        aio.run(kit.publish(streams[0], items))
        wait_until(lambda: len(outcome.seen()) == len(items), "every record done", server)
        digest = server.client.get("/v1/models").json()["models"][0]["digest"]
        assert server.stop() == 0
        print(f"retried at {delays}; then {check_complete(outcome, items, bad, digest)[1]}")
    finally:
        if tansu is not None:
            tansu.stop()


def test_engine_stuck_on_a_broker_that_is_down_stops_cleanly_when_asked(
        aio: Aio, engines: Engines) -> None:
    """SIGTERM while every step fails and backs off: the stream stops within the drain
    budget (2s here, while a backoff grows to 10s), and the engine exits 0."""
    kit = KafkaKit(free_port())  # nothing ever listens there
    server = engines(*urls(kit, (kit.fresh(), kit.fresh(), kit.fresh())), "stuck", sleep=0,
                     broker_down=True, BATON_DRAIN_TIMEOUT="2")
    wait_until(lambda: stream_stats(server)["retries"] >= 5, "five retries", server)
    code = server.stop()
    log = Path(server.log.name).read_text()
    assert code == 0, log[-3000:]
    assert "stream stopped" in log and "did not drain" not in log, log[-3000:]
