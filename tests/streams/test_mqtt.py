"""What only the MQTT connector does: messages held across a reconnect, scored once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.streams.brokers import PrivateMosquitto
from tests.streams.conftest import Aio
from tests.streams.kits import MqttKit
from tests.streams.test_conformance import (
    group,
    held_source,
    nothing_before_the_next,
    opened_source,
)


def test_messages_held_across_a_broker_restart_are_not_delivered_again(
        tmp_path: Path, aio: Aio) -> None:
    """The session survives the restart and the broker sends again what it has not had a
    PUBACK for, with the same packet ids: the copies of messages the pipeline still holds
    are dropped, and their acknowledgement goes out on the new connection."""
    broker = PrivateMosquitto(tmp_path / "mosquitto").start()
    kit = MqttKit(broker.port)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        source, held = await held_source(kit, stream, grp)
        try:
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            await nothing_before_the_next(kit, stream, source, 6)
            await source.ack(held)
        finally:
            await source.close()
        again = await opened_source(kit, kit.url(stream), grp)
        try:  # the acknowledgements of the held ones reached the broker
            await nothing_before_the_next(kit, stream, again, 7)
        finally:
            await again.close()

    try:
        aio.run(body())
    finally:
        broker.stop()
