"""What only the Redis Streams connector does: its pending entries, read once each."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from baton.streams.base import StreamError, open_source
from tests.streams.brokers import PrivateRedis
from tests.streams.conftest import Aio
from tests.streams.kits import RedisKit
from tests.streams.test_conformance import pairs, read_in_flight, read_n, records


def test_entries_held_across_a_reconnect_are_not_delivered_again(tmp_path: Path,
                                                                  aio: Aio) -> None:
    """A read that fails (the server restarted) makes the source look through its pending
    entries again, for any whose reply was lost; the ones it holds (in the pipeline, to be
    acknowledged) must not be handed out a second time."""
    broker = PrivateRedis(tmp_path / "redis").start()
    kit = RedisKit(broker.port)

    async def body() -> None:
        stream, group = kit.fresh(), f"held-{uuid.uuid4().hex[:8]}"
        source = open_source(kit.url(stream), group=group)
        await source.open()
        try:
            sent = records(6)
            await kit.publish(stream, sent)
            held = await read_n(source, 6, ack=False, batch=2)
            assert pairs(held) == sent
            await asyncio.to_thread(broker.stop)
            with pytest.raises(StreamError):
                await source.read(2, 0.1)
            await asyncio.to_thread(broker.start)
            after = records(1, start=6)  # anything sent again would come before this one
            await kit.publish(stream, after)
            later = await read_in_flight(source, until=after[0][0])
            assert pairs(later) == after, "entries still held were delivered again"
            await source.ack(held)
            assert await kit.pending(stream, group) == 0
        finally:
            await source.close()

    try:
        aio.run(body())
    finally:
        broker.stop()
