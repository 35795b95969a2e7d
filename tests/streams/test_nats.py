"""What only the NATS JetStream connector does: keeping messages it holds from redelivery."""

from __future__ import annotations

import asyncio

from tests.streams.brokers import require_service
from tests.streams.conftest import Aio
from tests.streams.kits import NatsKit
from tests.streams.test_conformance import group, held_source, nothing_before_the_next


def test_messages_held_longer_than_ack_wait_are_not_delivered_again(aio: Aio) -> None:
    """A batch held past the consumer's ack_wait (2 s here: a model restarting, a sink
    refusing writes) is still in the pipeline: the server must not send it again, or it
    is scored twice. The source reports progress on what it holds (+WPI)."""
    require_service("nats")
    kit = NatsKit()

    async def body() -> None:
        stream = kit.fresh()
        source, held = await held_source(kit, stream, group())
        try:
            await asyncio.sleep(5)  # the fault: held for more than twice ack_wait
            await nothing_before_the_next(kit, stream, source, 6)
            await source.ack(held)
        finally:
            await source.close()
            await kit.cleanup()

    aio.run(body())
