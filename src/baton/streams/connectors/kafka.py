"""``kafka://HOST:PORT/TOPIC``: Apache Kafka (or a Kafka-compatible broker) via confluent-kafka.

Source: a consumer of group ``?group=`` (default: the binding's) that is *assigned* every
partition the topic has when it opens, instead of subscribing: no group membership, so no
rebalance wait on start, and no partition split between engines either (run one engine per
group and topic). It resumes from the group's committed offsets (``?start=earliest`` or
``latest`` when the group has none; default ``earliest``) and, on ack, commits the next
offset of each partition. The commit is queued without waiting for the broker (the outputs
are already durable, so a lost commit only means records delivered again); a failed commit,
reported back while the source polls, makes the next ack commit synchronously and raise if
that fails too; close commits the latest ack synchronously. Partitions added to the topic
later are not picked up until the engine restarts. The record key is the Kafka key (UTF-8), or
``PARTITION-OFFSET`` when a message has none; Kafka headers become message headers.
A missing topic is created with ``?partitions=`` partitions (default 1).

Sink: an idempotent producer (``acks=all``); ``write`` returns once every record is
acknowledged by the broker (``flush``), keys and headers carried as Kafka keys and headers.
A write fails as soon as the client reports an error (broker down), or after ``?timeout=``
seconds (default 30) without every acknowledgement; it then purges what is still queued
and drops the producer, so the pipeline's retry sends each record again with a fresh one
(copies never pile up, and a producer the broker fenced is not reused).

Credentials and TLS map to librdkafka's settings (see :func:`security_config`): SASL with
``?sasl=PLAIN|SCRAM-SHA-256|SCRAM-SHA-512`` and the user and password of the URL
(``kafka://USER:PASSWORD@...``, the password possibly from ``?password_env=`` or
``?password_file=``); TLS with ``?tls=true``, ``?ca=``, ``?cert=``/``?key=``. Together they
choose ``security.protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. The broker's
certificate and host name are always verified.

confluent-kafka blocks, so client calls run on threads owned by the connector: the
producer's on one, the consumer's polls on one and its synchronous commits on another (so
they never wait behind a poll; librdkafka's consumer is thread-safe). Calls on one thread
stay in order, and the event loop never waits on the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from baton.streams.base import (
    Message,
    OptionKind,
    OutRecord,
    StreamURL,
    bad_url,
)
from baton.streams.connectors._kafka_client import KafkaClient, kafka_error
from baton.streams.connectors._kafka_client import security_config as security_config
from baton.streams.connectors._support import reason
from baton.streams.security import PASSWORD_FROM, TLS_FILES, TLS_SWITCH

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("confluent_kafka", "confluent-kafka")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OPTIONS: dict[str, OptionKind] = {
    "group": "text", "partitions": "count", "timeout": "number",
    "start": ("earliest", "latest", "beginning", "end", "smallest", "largest"),
    "sasl": SASL_MECHANISMS, **PASSWORD_FROM, **TLS_SWITCH, **TLS_FILES}

log = logging.getLogger("baton.streams.kafka")


def check(url: StreamURL) -> None:
    """SASL needs a user and its password, and credentials need a SASL mechanism."""
    sasl = url.options.get("sasl")
    if sasl is not None and (url.username is None or url.password is None):
        raise bad_url(url.raw, "sasl", f"?sasl={sasl} needs a user and password "
                      f"(kafka://USER:PASSWORD@HOST:PORT/TOPIC, or the password from "
                      f"?password_env= or ?password_file=)")
    if sasl is None and (url.username is not None or url.password is not None):
        raise bad_url(url.raw, "sasl", f"Kafka credentials need a SASL mechanism: add "
                      f"?sasl= with one of {', '.join(SASL_MECHANISMS)}")


class KafkaSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.client = KafkaClient(url)
        self.url = url
        self.client.config.update({
            "group.id": url.option("group", group), "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": url.option("start", "earliest"),
            "on_commit": self._on_commit})
        self.consumer: Any = None
        self._commit_error: str | None = None
        self._committed: list[Any] = []  # the offsets of the latest ack

    async def open(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        await self.close()
        self.consumer = self.client.create(Consumer)
        try:
            partitions = await self.client.check_topic(self.consumer)
            # No offset given: each partition resumes from the group's committed offset.
            await self.client.call(self.consumer.assign,
                                   [TopicPartition(self.client.topic, p) for p in partitions])
        except BaseException:
            await self.close()
            raise

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        try:
            got = await self.client.call(self._poll, max_records, timeout)
        except Exception as exc:
            raise kafka_error("consume", self.url, exc) from None
        messages, errors = [], []
        for m in got:
            if m.error() is None:
                messages.append(self._message(m))
            elif m.error().fatal():
                raise kafka_error("consume", self.url, str(m.error()))
            else:
                errors.append(str(m.error()))
        pending = self.client.take_error()
        if not messages and (errors or pending):  # never drop messages for a transient error
            raise kafka_error("consume", self.url, errors[0] if errors else str(pending))
        return messages

    def _poll(self, max_records: int, timeout: float) -> list[Any]:
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        return [first, *self.consumer.consume(max_records - 1, 0)] if max_records > 1 \
            else [first]

    def _message(self, m: Any) -> Message:
        key = m.key()
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
        return Message(key.decode("utf-8", "replace") if key is not None
                       else f"{m.partition()}-{m.offset()}", m.value() or b"",
                       (m.partition(), m.offset()), headers)

    async def ack(self, messages: Sequence[Message]) -> None:
        from confluent_kafka import TopicPartition

        if not messages:
            return
        upto: dict[int, int] = {}
        for m in messages:
            partition, offset = m.position
            upto[partition] = max(upto.get(partition, -1), offset + 1)
        offsets = [TopicPartition(self.client.topic, p, o) for p, o in sorted(upto.items())]
        consumer = self.consumer
        error, self._commit_error = self._commit_error, None
        if error is None:
            # The outputs are durable already: the commit is queued for the client's thread
            # (no wait), its result comes back through on_commit while the source polls.
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
                self._committed = offsets
                return
            except Exception as exc:
                error = reason(exc)
        # An earlier commit failed (or this one could not be queued): commit this batch,
        # which covers the earlier ones, and wait for the broker's answer.
        log.info("a commit on %s failed (%s); committing synchronously", self.url.redacted,
                 error)
        try:
            done = await self.client.call(
                lambda: consumer.commit(offsets=offsets, asynchronous=False), lane="commit")
        except Exception as exc:
            raise kafka_error("commit", self.url, exc) from None
        failed = [tp for tp in done or [] if tp.error is not None]
        if failed:
            raise kafka_error("commit", self.url, str(failed[0].error))
        self._committed = offsets

    async def lag(self) -> int | None:
        """Records after the consumer's position, up to each partition's high watermark."""
        consumer = self.consumer
        if consumer is None:
            return None
        return await self.client.call(self._lag, consumer, lane="commit")

    def _lag(self, consumer: Any) -> int | None:
        total = 0
        for tp in consumer.position(consumer.assignment()):
            _low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            if tp.offset >= 0:  # a position is known once the partition was fetched from
                total += max(0, high - tp.offset)
            else:
                committed = consumer.committed([tp], timeout=5)[0].offset
                total += high - committed if committed >= 0 else high - _low
        return total

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        failed = [str(tp.error) for tp in partitions or [] if tp.error is not None]
        if err is not None or failed:
            self._commit_error = str(err) if err is not None else failed[0]

    def _last_commit_and_close(self, consumer: Any, offsets: list[Any]) -> None:
        """Make sure the latest ack is committed before leaving (a clean stop leaves nothing
        to deliver again), then close."""
        try:
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:
            log.warning("final commit on %s failed (those records come again): %s",
                        self.url.redacted, reason(exc))
        consumer.close()

    async def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        offsets, self._committed = self._committed, []
        await self.client.shutdown(
            (lambda: self._last_commit_and_close(consumer, offsets)) if consumer is not None
            else None)


class KafkaSink:
    def __init__(self, url: StreamURL) -> None:
        self.client = KafkaClient(url)
        self.url = url
        # Delivery reports only for failures: a success needs no Python callback (each one
        # would wait for the GIL on the client's thread), flush() returning 0 says it.
        self.client.config.update({"enable.idempotence": True, "acks": "all",
                                   "linger.ms": 2, "delivery.report.only.error": True})
        self.producer: Any = None

    async def open(self) -> None:
        from confluent_kafka import Producer

        await self.close()
        self.producer = self.client.create(Producer)
        try:
            await self.client.check_topic(self.producer)
        except BaseException:
            await self.close()
            raise

    async def write(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        if self.producer is None:
            await self.open()
        try:
            failures = await self.client.call(self._produce, records)
        except Exception as exc:
            failures = [reason(exc)]
        if failures:
            # A fresh producer for the retry: after some errors (a fenced or otherwise
            # fatal idempotent producer) the old one never delivers again.
            await self.close()
            raise kafka_error("produce", self.url, failures[0])

    def _produce(self, records: Sequence[OutRecord]) -> list[str]:
        failures: list[str] = []
        self.client.take_error()  # an error from before this write says nothing about it

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for r in records:
            while True:
                try:
                    self.producer.produce(
                        self.client.topic, r.value, r.key.encode() if r.key is not None
                        else None, headers=list(r.headers.items()) or None,
                        on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let it drain, then go on
                    self.producer.poll(0.1)
        left, why = self._flush()
        if left and not failures:
            failures.append(f"{left} record(s) not acknowledged: {why}")
        if left or failures:
            # A retry sends these again: drop what is still queued so copies never pile up.
            self.producer.purge(in_queue=True, in_flight=True)
            self.producer.flush(0)
        return failures

    def _flush(self) -> tuple[int, str]:
        """Wait for every delivery report; stop early once the client reports an error
        (broker down, connection refused) rather than wait out the whole timeout."""
        deadline = time.monotonic() + self.client.timeout
        while (left := self.producer.flush(0.5)) and time.monotonic() < deadline:
            error = self.client.take_error()
            if error is not None:
                return left, error
        return left, f"no answer within {self.client.timeout:.0f}s"

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        await self.client.shutdown((lambda: producer.flush(1)) if producer is not None
                                   else None)


def open_source(url: StreamURL, *, group: str) -> KafkaSource:
    return KafkaSource(url, group)


def open_sink(url: StreamURL) -> KafkaSink:
    return KafkaSink(url)
