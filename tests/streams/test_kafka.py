"""What only the Kafka connector does: creating the topics it needs as the URL says."""

from __future__ import annotations

import uuid

from baton.streams.base import open_sink, open_source
from tests.streams.brokers import Tansu
from tests.streams.conftest import Aio


def partitions(tansu: Tansu, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{tansu.port}"})
    return len(admin.list_topics(timeout=10).topics[topic].partitions)


def test_missing_topics_are_created_with_the_partitions_the_url_asks_for(
        tansu: Tansu, aio: Aio) -> None:
    """For the sink as for the source: the broker's own default (auto-creation on a
    metadata request) never gets there first."""
    async def body() -> None:
        out, inp = f"baton-out-{uuid.uuid4().hex[:8]}", f"baton-in-{uuid.uuid4().hex[:8]}"
        sink = open_sink(f"kafka://127.0.0.1:{tansu.port}/{out}?partitions=3")
        source = open_source(f"kafka://127.0.0.1:{tansu.port}/{inp}?partitions=2", group="g")
        await sink.open()
        await source.open()
        await sink.close()
        await source.close()
        assert (partitions(tansu, out), partitions(tansu, inp)) == (3, 2)

    aio.run(body())
