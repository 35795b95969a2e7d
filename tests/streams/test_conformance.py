"""The contract every connector keeps, checked through the Source/Sink interface only.

Each test runs once per connector (file, redis, nats, amqp, mqtt, kafka) against the real
broker. A new connector is done when it passes this file unchanged.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from typing import Any

import pytest

from baton.streams.base import Message, OutRecord, StreamError, open_sink, open_source
from tests.conftest import free_port
from tests.streams.conftest import Aio
from tests.streams.kits import FileKit, Item, Kit


def records(n: int, start: int = 0) -> list[Item]:
    """Keyed JSON records; the key is in the value too, where the file connector reads it."""
    return [(f"k{i:03d}", json.dumps({"key": f"k{i:03d}", "n": i}).encode())
            for i in range(start, start + n)]


def group() -> str:
    return f"conformance-{uuid.uuid4().hex[:8]}"


async def opened_source(kit: Kit, url: str, grp: str) -> Any:
    source = open_source(url, group=grp)
    await source.open()
    return source


async def read_n(source: Any, n: int, *, ack: bool, batch: int = 10,
                 patience: float = 20) -> list[Message]:
    """Read until ``n`` messages came, never more (or ``patience`` seconds passed: then fewer).

    With ``ack``, each batch is acknowledged before the next read, as the pipeline does:
    a broker may hold back more than one batch of unacknowledged messages (AMQP prefetch,
    MQTT in-flight window).
    """
    got: list[Message] = []
    deadline = time.monotonic() + patience
    while len(got) < n and time.monotonic() < deadline:
        want = min(batch, n - len(got))  # never past n: a caller counts what it holds
        chunk = await source.read(want, 0.5)
        assert len(chunk) <= want, f"read returned {len(chunk)} > max_records={want}"
        if ack:
            await source.ack(chunk)
        got += chunk
    return got


def pairs(messages: list[Message]) -> list[Item]:
    return [(m.key, m.value) for m in messages]


def test_read_returns_what_was_published_with_keys_in_order(broker: Kit, aio: Aio) -> None:
    async def body() -> None:
        stream, grp = broker.fresh(), group()
        source = await opened_source(broker, broker.url(stream), grp)
        try:
            sent = records(25)
            await broker.publish(stream, sent)
            got = await read_n(source, 25, ack=True)
            assert pairs(got) == sent
        finally:
            await source.close()

    aio.run(body())


def test_read_waits_about_timeout_when_empty(broker: Kit, aio: Aio) -> None:
    async def body() -> None:
        source = await opened_source(broker, broker.url(broker.fresh()), group())
        try:
            started = time.monotonic()
            got = await source.read(10, 0.3)
            waited = time.monotonic() - started
        finally:
            await source.close()
        assert got == []
        assert waited < 3.0, f"an empty read blocked {waited:.1f}s for a 0.3s timeout"

    aio.run(body())


def test_acknowledged_messages_are_not_delivered_again_after_reopen(broker: Kit,
                                                                     aio: Aio) -> None:
    async def body() -> None:
        stream, grp = broker.fresh(), group()
        url = broker.url(stream)
        source = await opened_source(broker, url, grp)
        await broker.publish(stream, records(12))
        got = await read_n(source, 12, ack=True)
        assert len(got) == 12
        await source.close()
        again = await opened_source(broker, url, grp)
        try:
            await nothing_before_the_next(broker, stream, again, 12)
        finally:
            await again.close()

    aio.run(body())


async def held_source(kit: Kit, stream: str, grp: str, *, batch: int = 10,
                      n: int = 6) -> tuple[Any, list[Message]]:
    """A source on ``stream`` that read the ``n`` records just published to it and
    acknowledged none: what an engine holds in flight."""
    source = await opened_source(kit, kit.url(stream), grp)
    try:
        sent = records(n)
        await kit.publish(stream, sent)
        held = await read_n(source, n, ack=False, batch=batch)
        assert pairs(held) == sent
    except BaseException:
        await source.close()
        raise
    return source, held


async def nothing_before_the_next(broker: Kit, stream: str, source: Any, n: int) -> None:
    """Nothing is delivered (again) before record ``n``, published now: whatever would
    come again comes before what is published later, so this decides without a wait."""
    after = records(1, start=n)
    await broker.publish(stream, after)
    assert pairs(await read_in_flight(source, until=after[0][0])) == after


def test_unacknowledged_messages_are_delivered_again_after_reopen(broker: Kit,
                                                                   aio: Aio) -> None:
    """At least once: what was read but never acknowledged comes again, and only that.

    Each comes once, before what was published after the reopen, even when the reader
    keeps several batches in flight as the pipeline does (a source that reads its
    unacknowledged messages again on every read hands the ones in flight out twice).
    MQTT too: the connector acknowledges (PUBACK) only on ack, and its session persists.
    """
    async def body() -> None:
        stream, grp = broker.fresh(), group()
        url = broker.url(stream)
        sent = records(10)
        source = await opened_source(broker, url, grp)
        await broker.publish(stream, sent)
        got = await read_n(source, 10, ack=False)
        assert pairs(got) == sent
        await source.ack(got[:4])
        await source.close()  # as a crash would: six read, never acknowledged

        again = await opened_source(broker, url, grp)
        after = records(1, start=10)  # published after the reopen: it comes last
        await broker.publish(stream, after)
        redelivered = await read_in_flight(again, until=after[0][0])
        assert pairs(redelivered) == sent[4:] + after
        await again.close()

        last = await opened_source(broker, url, grp)
        try:
            await nothing_before_the_next(broker, stream, last, 11)
        finally:
            await last.close()

    aio.run(body())


async def read_in_flight(source: Any, *, until: str, window: int = 3, batch: int = 2,
                         patience: float = 30) -> list[Message]:
    """Read as the pipeline does: up to ``window`` batches read and not yet acknowledged,
    the oldest acknowledged before the next read; until the message keyed ``until`` came
    (then everything is acknowledged), or ``patience`` seconds passed. Reads that fail
    while the source reconnects (after a broker restart) are tried again."""
    got: list[Message] = []
    held: deque[list[Message]] = deque()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline and until not in {m.key for m in got}:
        if len(held) == window:
            await source.ack(held.popleft())
        try:
            chunk = await source.read(batch, 0.5)
        except StreamError:
            await asyncio.sleep(0.1)
            continue
        assert len(chunk) <= batch, f"read returned {len(chunk)} > max_records={batch}"
        if chunk:
            held.append(chunk)
        got += chunk
    for chunk in held:
        await source.ack(chunk)
    return got


def test_sink_writes_are_readable_with_their_keys(broker: Kit, aio: Aio) -> None:
    async def body() -> None:
        stream = broker.fresh()
        reader = broker.reader(stream)
        await reader.start()  # an MQTT subscriber gets only what comes after it subscribed
        sink = open_sink(broker.url(stream))
        await sink.open()
        sent = records(15)
        try:
            await sink.write([OutRecord(k, v) for k, v in sent[:5]])
            await sink.write([OutRecord(k, v, {"origin": "test"}) for k, v in sent[5:]])
            await sink.write([])
        finally:
            await sink.close()
        deadline = time.monotonic() + 20
        while len(await reader.poll()) < 15 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await reader.close()
        assert reader.items == sent, f"{len(reader.items)} of 15 records read back in 20s"

    aio.run(body())


def test_opening_against_a_broker_that_is_down_is_a_clear_stream_error(broker: Kit,
                                                                        aio: Aio) -> None:
    if isinstance(broker, FileKit):
        source_url, sink_url, named = broker.down_url()
    else:
        port = free_port()  # nothing listens there
        source_url = sink_url = broker.url(broker.fresh(), port=port)
        named = f"127.0.0.1:{port}"

    async def body() -> None:
        for part in (open_source(source_url, group=group()), open_sink(sink_url)):
            with pytest.raises(StreamError) as err:
                await part.open()
            await part.close()
            assert named in err.value.message, err.value.message
            assert err.value.code == "STREAM_ERROR"

    aio.run(body())


def test_lag_counts_the_records_not_read_yet(broker: Kit, aio: Aio) -> None:
    """The backlog a source reports: all of it before reading, what is left after."""
    async def eventually(source: Any, expected: int) -> None:
        deadline, seen = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            seen = await source.lag()
            if seen == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"lag {seen}, expected {expected}")

    async def body() -> None:
        stream, grp = broker.fresh(), group()
        source = await opened_source(broker, broker.url(stream), grp)
        try:
            # One publish per record: Tansu 0.6 reports a partition's high watermark as the
            # base offset of its last record batch + 1 (Kafka: last offset + 1); with
            # single-record batches both are the same.
            for item in records(20):
                await broker.publish(stream, [item])
            await eventually(source, 20)
            got = await read_n(source, 10, ack=True)
            assert len(got) >= 10
            await eventually(source, 20 - len(got))
            await read_n(source, 20 - len(got), ack=True)
            await eventually(source, 0)
        finally:
            await source.close()

    aio.run(body())
