"""What only the MQTT connector does: messages held across a reconnect, scored once."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from baton.streams.base import Message, StreamError, open_source
from tests.streams.brokers import PrivateMosquitto
from tests.streams.conftest import Aio
from tests.streams.kits import MqttKit
from tests.streams.test_conformance import nothing_before_the_next, pairs, read_n, records


async def read_until(source: Any, key: str, patience: float = 30) -> list[Message]:
    """Read (unacknowledged) until the message keyed ``key`` came; while the source is
    reconnecting its reads fail, which is waited out."""
    got: list[Message] = []
    deadline = time.monotonic() + patience
    while key not in {m.key for m in got}:
        assert time.monotonic() < deadline, f"{key} not read within {patience:.0f}s: {got}"
        try:
            got += await source.read(10, 0.5)
        except StreamError:  # not reconnected yet
            await asyncio.sleep(0.1)
    return got


def test_messages_held_across_a_broker_restart_are_not_delivered_again(
        tmp_path: Path, aio: Aio) -> None:
    """The session survives the restart and the broker sends again what it has not had a
    PUBACK for, with the same packet ids: the copies of messages the pipeline still holds
    are dropped, and their acknowledgement goes out on the new connection."""
    broker = PrivateMosquitto(tmp_path / "mosquitto").start()
    kit = MqttKit(broker.port)

    async def body() -> None:
        stream, group = kit.fresh(), f"held-{uuid.uuid4().hex[:8]}"
        url = kit.url(stream)
        source = open_source(url, group=group)
        await source.open()
        try:
            sent = records(6)
            await kit.publish(stream, sent)
            held = await read_n(source, 6, ack=False)
            assert pairs(held) == sent
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            after = records(1, start=6)  # anything sent again would come before this one
            await kit.publish(stream, after)
            later = await read_until(source, after[0][0])
            assert pairs(later) == after, "messages still held were delivered again"
            await source.ack(held)
            await source.ack(later)
        finally:
            await source.close()
        again = open_source(url, group=group)
        await again.open()
        try:  # the acknowledgements of the held ones reached the broker
            await nothing_before_the_next(kit, stream, again, 7)
        finally:
            await again.close()

    try:
        aio.run(body())
    finally:
        broker.stop()
