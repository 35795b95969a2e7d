"""What only the Redis Streams connector does: its pending entries, read once each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from baton.streams.base import StreamError
from tests.streams.brokers import PrivateRedis
from tests.streams.conftest import Aio
from tests.streams.kits import RedisKit
from tests.streams.test_conformance import group, held_source, nothing_before_the_next


def test_entries_held_across_a_reconnect_are_not_delivered_again(tmp_path: Path,
                                                                  aio: Aio) -> None:
    """A read that fails (the server restarted) makes the source look through its pending
    entries again, for any whose reply was lost; the ones it holds (in the pipeline, to be
    acknowledged) must not be handed out a second time."""
    broker = PrivateRedis(tmp_path / "redis").start()
    kit = RedisKit(broker.port)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        source, held = await held_source(kit, stream, grp, batch=2)
        try:
            await asyncio.to_thread(broker.stop)
            with pytest.raises(StreamError):
                await source.read(2, 0.1)
            await asyncio.to_thread(broker.start)
            await nothing_before_the_next(kit, stream, source, 6)
            await source.ack(held)
            assert await kit.pending(stream, grp) == 0
        finally:
            await source.close()

    try:
        aio.run(body())
    finally:
        broker.stop()
