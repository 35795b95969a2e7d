"""Faults end to end: a real `baton serve` bound to real brokers, killed, cut off, refused.

What a user observes decides: every input key ends with an output or a dead letter (a loss
fails the test), dead letters say why. Duplicates are at-least-once: after a kill, at most
the records the engine held unacknowledged (its in-flight window) may come out again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from baton.streams.base import redact_url
from tests.conftest import free_port
from tests.streams.brokers import (
    PrivateMosquitto,
    PrivateNats,
    PrivateRedis,
    Tansu,
    TcpProxy,
    require_service,
)
from tests.streams.conftest import BROKERS, SCHEMES, Aio, make_kit
from tests.streams.engines import (
    WINDOW,
    Engines,
    Outcome,
    Tidy,
    check_complete,
    make_inputs,
    sigkill,
    stream_stats,
    urls,
    wait_until,
)
from tests.streams.kits import AmqpKit, KafkaKit, Kit, MqttKit, NatsKit, RedisKit, suffix

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
