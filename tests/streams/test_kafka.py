"""What only the Kafka connector does: creating the topics it needs as the URL says."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from baton.streams.base import Message, StreamError, open_sink, open_source
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


def publish(tansu: Tansu, topic: str, partitions: int, each: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{tansu.port}", "acks": "all"})
    for p in range(partitions):
        for i in range(each):
            producer.produce(topic, f"{p}-{i}".encode(), partition=p)
    assert producer.flush(30) == 0


def committed(tansu: Tansu, topic: str, group: str, partitions: int) -> list[int]:
    """The group's committed offsets (-1001: none), asked without joining the group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{tansu.port}", "group.id": group})
    try:
        return [tp.offset for tp in consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10)]
    finally:
        consumer.close()


def test_two_sources_of_one_group_share_the_partitions_and_a_late_ack_commits_nothing(
        tansu: Tansu, aio: Aio) -> None:
    """The second source takes one of the first's two partitions. The first acknowledges
    everything it read after that: only its own partition is committed, and the new owner
    reads the moved one from the start, the records the first held unacknowledged included
    (at-least-once)."""
    async def body() -> None:
        topic, group = f"baton-in-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
        url = f"kafka://127.0.0.1:{tansu.port}/{topic}?partitions=2"
        first, second = open_source(url, group=group), open_source(url, group=group)
        await first.open()
        await asyncio.to_thread(publish, tansu, topic, 2, 50)
        held: list[Message] = []
        deadline = time.monotonic() + 60  # the group join comes first
        while len(held) < 100 and time.monotonic() < deadline:
            held += await first.read(100, 0.2)
        assert len(held) == 100, f"{len(held)} of 100 records read by the only member"

        await second.open()
        taken: list[Message] = []
        deadline = time.monotonic() + 90  # both must poll for the rebalance to go on
        while len({m.position[0] for m in taken}) < 1 and time.monotonic() < deadline:
            assert not await first.read(100, 0.2), "nothing new was published"
            taken += await second.read(100, 0.2)
        moved = {m.position[0] for m in taken}
        assert len(moved) == 1, f"the second source reads partitions {moved}"
        (gone,) = moved
        assert sorted(m.value for m in taken) == sorted(
            m.value for m in held if m.position[0] == gone)

        await first.ack(held)  # late for the moved partition
        await first.close()
        assert committed(tansu, topic, group, 2)[gone] == -1001  # OFFSET_INVALID: none
        assert committed(tansu, topic, group, 2)[1 - gone] == 50
        await second.ack(taken)
        await second.close()
        assert committed(tansu, topic, group, 2) == [50, 50]

    aio.run(body(), timeout=200)

def test_an_ack_does_not_wait_for_the_poll_in_progress(tansu: Tansu, aio: Aio) -> None:
    """confluent-kafka lets one call at a time use a consumer: a commit from the ack's side
    would wait for a poll of an idle input to end (the whole read timeout; at the end of a
    stream, once per batch still to acknowledge). The ack only notes the offsets; the poll
    thread commits them before its next poll."""
    async def body() -> None:
        topic, group = f"baton-in-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
        source = open_source(f"kafka://127.0.0.1:{tansu.port}/{topic}", group=group)
        await source.open()
        await asyncio.to_thread(publish, tansu, topic, 1, 30)
        held: list[Message] = []
        deadline = time.monotonic() + 60  # the group join comes first
        while len(held) < 30 and time.monotonic() < deadline:
            held += await source.read(100, 0.2)
        assert len(held) == 30
        idle = asyncio.create_task(source.read(100, 3.0))  # nothing more: polls for 3 s
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await source.ack(held[:20])
        took = time.monotonic() - started
        assert not await idle
        assert took < 1.0, f"the ack waited {took:.1f}s for the poll in progress"
        assert await source.read(100, 0.1) == []  # the commit is queued before this poll
        deadline = time.monotonic() + 10
        while committed(tansu, topic, group, 1) != [20] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert committed(tansu, topic, group, 1) == [20]
        await source.ack(held[20:])
        await source.close()  # commits the last acks
        assert committed(tansu, topic, group, 1) == [30]

    aio.run(body(), timeout=120)


def test_a_session_timeout_under_a_second_is_a_bad_url() -> None:
    with pytest.raises(StreamError) as err:
        open_source("kafka://127.0.0.1:9092/t?session_timeout=0.5", group="g")
    assert (err.value.code, err.value.details["option"]) == ("BAD_STREAM_URL",
                                                             "session_timeout")
