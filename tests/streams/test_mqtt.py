"""What only the MQTT connector does: messages held across a reconnect, scored once; one
group shared through a shared subscription; a session left behind drained by another
engine; the backlog in memory bounded by Receive Maximum."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.streams.brokers import PrivateMosquitto
from tests.streams.conftest import Aio
from tests.streams.kits import Kit, MqttKit
from tests.streams.test_conformance import (
    group,
    held_source,
    nothing_before_the_next,
    opened_source,
    pairs,
    read_n,
    records,
)


async def until(check: Any, what: str, patience: float = 20) -> None:
    """Wait for ``check()``; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + patience
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {patience:.0f}s"
        await asyncio.sleep(0.02)


def test_messages_held_across_a_broker_restart_are_not_delivered_again(
        tmp_path: Path, aio: Aio) -> None:
    """The session survives the restart and the broker sends again what it has not had a
    PUBACK for, with the same packet ids: the copies of messages the pipeline still holds
    are dropped, and their acknowledgement goes out on the new connection.

    Mosquitto before 2.0.19 does not keep a shared subscription across its restart (the
    session and its messages, yes): what is published before the source subscribed again
    is not queued for it, so the test publishes once it has."""
    broker = PrivateMosquitto(tmp_path / "mosquitto").start()
    kit = MqttKit(broker.port)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        source, held = await held_source(kit, stream, grp)
        try:
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            await until(lambda: source.session.subscribed, "subscribed again")
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


def url_as(kit: Kit, stream: str, client_id: str, extra: str = "&shared=true") -> str:
    """An engine's input URL: its own session, in the group's shared subscription."""
    return f"{kit.url(stream)}&client_id={client_id}{extra}"


def test_two_sources_of_one_group_share_the_messages(aio: Aio) -> None:
    kit = MqttKit(1883)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        a = await opened_source(kit, url_as(kit, stream, f"{grp}-a"), grp)
        b = await opened_source(kit, url_as(kit, stream, f"{grp}-b"), grp)
        try:
            sent = records(40)
            await kit.publish(stream, sent)
            got_a = await read_n(a, 20, ack=True)
            got_b = await read_n(b, 20, ack=True)
            # Mosquitto hands the members of a shared subscription one message each in turn
            assert len(got_a) == len(got_b) == 20
            assert sorted(pairs(got_a) + pairs(got_b)) == sent
        finally:
            await a.close()
            await b.close()

    aio.run(body())


def test_a_session_left_behind_is_drained_by_an_engine_of_the_group_and_ended(
        aio: Aio) -> None:
    """An engine stops holding messages it never acknowledged, and its share queued: the
    other engine of the group adopts the session, gets all of them, and ends it."""
    kit = MqttKit(1883)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        a = await opened_source(kit, url_as(kit, stream, f"{grp}-a"), grp)
        b = await opened_source(kit, url_as(kit, stream, f"{grp}-b"), grp)
        try:
            sent = records(40)
            await kit.publish(stream, sent)
            abandoned = await read_n(a, 5, ack=False, batch=5)
            assert len(abandoned) == 5
            await a.close()
            got = await read_n(b, 40, ack=True, patience=30)
            assert sorted(pairs(got)) == sent  # its 20, and the 20 a left, once each
            await until(lambda: not b.adopted, "the adopted session ended")
        finally:
            await b.close()
        # Ended: a client connecting with a's id finds no session.
        again = await opened_source(kit, url_as(kit, stream, f"{grp}-a"), grp)
        try:
            assert not again.session.present
        finally:
            await again.close()

    aio.run(body())


def test_receive_maximum_bounds_what_waits_in_memory(aio: Aio) -> None:
    """The broker sends at most ``receive_maximum`` unacknowledged messages and keeps the
    rest: a backlog never piles up in the engine."""
    kit = MqttKit(1883)

    async def body() -> None:
        stream, grp = kit.fresh(), group()
        source = await opened_source(
            kit, url_as(kit, stream, f"{grp}-a", "&receive_maximum=5"), grp)
        try:
            sent = records(30)
            await kit.publish(stream, sent)
            first = await read_n(source, 5, ack=False)
            assert pairs(first) == sent[:5]
            assert await source.read(10, 0.5) == []  # the broker holds the rest
            await source.ack(first)
            rest = await read_n(source, 25, ack=True)
            assert pairs(rest) == sent[5:]
        finally:
            await source.close()

    aio.run(body())
