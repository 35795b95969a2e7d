"""What only the NATS JetStream connector does: keeping messages it holds from redelivery."""

from __future__ import annotations

import asyncio
import uuid

from baton.streams.base import open_source
from tests.streams.brokers import require_service
from tests.streams.conftest import Aio
from tests.streams.kits import NatsKit
from tests.streams.test_conformance import pairs, read_in_flight, read_n, records


def test_messages_held_longer_than_ack_wait_are_not_delivered_again(aio: Aio) -> None:
    """A batch held past the consumer's ack_wait (2 s here: a model restarting, a sink
    refusing writes) is still in the pipeline: the server must not send it again, or it
    is scored twice. The source reports progress on what it holds (+WPI)."""
    require_service("nats")
    kit = NatsKit()

    async def body() -> None:
        stream = kit.fresh()
        source = open_source(kit.url(stream), group=f"held-{uuid.uuid4().hex[:8]}")
        await source.open()
        try:
            sent = records(6)
            await kit.publish(stream, sent)
            held = await read_n(source, 6, ack=False)
            assert pairs(held) == sent
            await asyncio.sleep(5)  # the fault: held for more than twice ack_wait
            after = records(1, start=6)  # anything sent again would come before this one
            await kit.publish(stream, after)
            later = await read_in_flight(source, until=after[0][0])
            assert pairs(later) == after, "messages still held were delivered again"
            await source.ack(held)
        finally:
            await source.close()
            await kit.cleanup()

    aio.run(body())
