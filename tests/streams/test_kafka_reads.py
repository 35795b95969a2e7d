"""What a Kafka read hands out and what acknowledging it notes, without a broker: the
messages of a poll are made in one pass, with the offsets an ack of the whole read commits."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError
from confluent_kafka import Message as KafkaMessage

from baton.streams.base import Message, parse_url
from baton.streams.connectors._kafka_client import Polled
from baton.streams.connectors.kafka import KafkaSource


class _Consumer:
    def __init__(self, got: list[Any]) -> None:
        self.got = got

    def poll(self, _timeout: float) -> Any:
        return self.got[0] if self.got else None

    def consume(self, n: int, _timeout: float) -> list[Any]:
        return self.got[1:n + 1]


def _source(got: list[Any], partitions: list[int]) -> KafkaSource:
    source = KafkaSource(parse_url("kafka://127.0.0.1:9092/t"), "g")
    source._held.assign(partitions)
    source.consumer = _Consumer(got)
    return source


def _record(partition: int, offset: int, key: bytes | None = None,
            headers: list[tuple[str, bytes | None]] | None = None) -> Any:
    return KafkaMessage("t", partition, offset, key, b'{"x": 1}', headers)


def test_a_poll_becomes_messages_tagged_with_their_generation() -> None:
    error = KafkaMessage("t", 0, -1, None, None, None, KafkaError(KafkaError._MSG_TIMED_OUT))
    got = [_record(0, 5, b"k5", [("h", b"v"), ("n", None)]), _record(1, 7), error,
           _record(0, 6), _record(2, 1, b"gone"), _record(1, 8, "ключ".encode())]
    source = _source(got, [0, 1])  # partition 2 was revoked meanwhile: not ours now
    messages, failed = source._poll(10, 0.1)
    assert isinstance(messages, Polled) and failed == [error]
    g0, g1 = source._held.generation[0], source._held.generation[1]
    assert [(m.key, m.position, m.headers) for m in messages] == [
        ("k5", (0, 5, g0), {"h": "v", "n": ""}), ("1-7", (1, 7, g1), {}),
        ("0-6", (0, 6, g0), {}), ("ключ", (1, 8, g1), {})]
    assert messages.upto == {(0, g0): 7, (1, g1): 9}
    assert (source._held.first, source._held.handed) == ({0: 5, 1: 7}, {0: 7, 1: 9})
    assert source._poll(10, 0.1)[0].upto == messages.upto  # a second read: first stays
    assert source._held.first == {0: 5, 1: 7}


def test_acking_a_whole_read_notes_what_acking_its_messages_one_list_does() -> None:
    got = [_record(0, 5), _record(1, 7), _record(0, 6)]
    whole, plain = _source(got, [0, 1]), _source(got, [0, 1])
    messages = whole._poll(10, 0.1)[0]
    asyncio.run(whole.ack(messages))
    asyncio.run(plain.ack([Message(m.key, m.value, m.position) for m in messages]))
    assert whole._held.acked == plain._held.acked == {0: 7, 1: 8}
    assert whole._held.to_commit() == {0: 7, 1: 8}
