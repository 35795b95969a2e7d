"""``kafka://HOST:PORT/TOPIC``: Apache Kafka (or a Kafka-compatible broker) via confluent-kafka.

Source: a member of consumer group ``?group=`` (default: the binding's ``--group``) that
*subscribes* to the topic, so the engines of one group share its partitions: each partition
is read by one engine at a time, and the group can use as many engines as the topic has
partitions (``?partitions=``, given when the topic is created; more engines stay idle).
Partitions are shared out by the client-side ``cooperative-sticky`` assignor, which Tansu
and Kafka both accept (the broker only picks a protocol every member names): when an engine
joins or leaves, only the partitions that move stop, the others keep flowing. An engine that
dies without leaving (SIGKILL, a lost host) keeps its partitions until ``?session_timeout=``
seconds (default 10) pass without its heartbeat (every third of that, at most 3 s): long
enough for a busy event loop or a slow broker not to cost a rebalance, short enough that a
dead engine's share moves on within seconds (librdkafka's own default is 45 s). A join is
slow on Tansu 0.6: about 5 s for the first member, up to about 20 s for the next (two
rounds of the cooperative protocol); a dead member's partitions moved in about 15 s.

Records are acknowledged per partition, only after the outputs are durable: an ack notes
the next offset of each partition the source still holds, and the poll thread commits the
acks noted since its last poll before it polls again, queued without waiting for the
broker (a lost commit only means records delivered again). Not from the ack's side:
confluent-kafka lets one call at a time use a consumer, so a commit there would wait for
the poll in progress, for the whole read timeout when the input is idle. A failed commit,
reported back while the source polls, makes the next ack commit synchronously and raise if
that fails too; close commits the latest acks synchronously, then leaves the group.
Each record carries the generation of its partition's assignment: when a partition is
revoked, the latest acks of it are committed at once and never again, so an ack that comes
later (the pipeline was still writing those outputs) commits nothing, even if the partition
came back meanwhile. What was handed out of it and not acknowledged is read again by its
next owner, from the committed offset: at-least-once, the duplicates bounded by what the
engine held in flight. A partition *lost* (this engine missed its own session timeout) is
dropped without a commit. The group resumes from its committed offsets (``?start=earliest``
or ``latest`` when it has none; default ``earliest``). The record key is the Kafka key
(UTF-8), or ``PARTITION-OFFSET`` when a message has none; Kafka headers become message
headers. A missing topic is created with ``?partitions=`` partitions (default 1). The
backlog (``lag``) counts this engine's partitions, or the whole topic before it first joins.

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
producer's on one, the consumer's polls (and with them the rebalance callbacks) on one and
its synchronous commits on another (so they never wait behind a poll; librdkafka's consumer
is thread-safe). Calls on one thread stay in order, and the event loop never waits on the
broker; the acks and the rebalance callbacks meet in :class:`Held`, under a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from baton.streams.base import (
    Message,
    OptionKind,
    StreamURL,
    bad_url,
)
from baton.streams.connectors._kafka_client import Held, KafkaClient, Polled, kafka_error
from baton.streams.connectors._kafka_client import security_config as security_config
from baton.streams.connectors._kafka_sink import KafkaSink as KafkaSink
from baton.streams.connectors._support import number, reason
from baton.streams.security import PASSWORD_FROM, TLS_FILES, TLS_SWITCH

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("confluent_kafka", "confluent-kafka")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Seconds without a heartbeat before the group hands a silent engine's partitions out.
SESSION_TIMEOUT = 10.0
OPTIONS: dict[str, OptionKind] = {
    "group": "text", "partitions": "count", "timeout": "number", "session_timeout": "number",
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
    if number(url, "session_timeout", SESSION_TIMEOUT) < 1:
        raise bad_url(url.raw, "session_timeout", "?session_timeout= is in seconds, at least 1")


class KafkaSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.client = KafkaClient(url)
        self.url = url
        session_ms = int(number(url, "session_timeout", SESSION_TIMEOUT) * 1000)
        self.client.config.update({
            "group.id": url.option("group", group), "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": url.option("start", "earliest"),
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(1, min(3000, session_ms // 3)),
            "on_commit": self._on_commit})
        self.consumer: Any = None
        self._commit_error: str | None = None
        self._held = Held()
        self._partitions: list[int] = []
        self._joined = False  # an assignment came (empty, with more engines than partitions)

    async def open(self) -> None:
        from confluent_kafka import Consumer

        await self.close()
        self._held, self._joined = Held(), False
        self.consumer = self.client.create(Consumer)
        try:
            self._partitions = await self.client.check_topic(self.consumer)
            # Membership: the group's coordinator shares the partitions out, on the polls.
            await self.client.call(lambda: self.consumer.subscribe(
                [self.client.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost))
        except BaseException:
            await self.close()
            raise

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        try:
            messages, failed = await self.client.call(self._poll, max_records, timeout)
        except Exception as exc:
            raise kafka_error("consume", self.url, exc) from None
        errors = []
        for m in failed:
            if m.error().fatal():
                raise kafka_error("consume", self.url, str(m.error()))
            errors.append(str(m.error()))
        pending = self.client.take_error()
        if not messages and (errors or pending):  # never drop messages for a transient error
            raise kafka_error("consume", self.url, errors[0] if errors else str(pending))
        return messages

    def _poll(self, max_records: int, timeout: float) -> tuple[Polled, list[Any]]:
        """Poll (rebalance callbacks run in here, on this thread), then make the messages,
        each tagged with its partition's generation, while no callback can run."""
        self._commit_acked()
        first = self.consumer.poll(timeout)
        if first is None:
            return Polled(), []
        got = [first, *self.consumer.consume(max_records - 1, 0)] if max_records > 1 \
            else [first]
        with self._held.lock:
            return self._hand_out(got)

    def _hand_out(self, got: list[Any]) -> tuple[Polled, list[Any]]:
        """The records of a poll as messages, and the error events among them. A record of
        a partition revoked meanwhile is dropped (not ours now). Call under the lock."""
        messages, failed = Polled(), []
        generation, upto, first = self._held.generation, messages.upto, {}
        append = messages.append
        for m in got:
            if m.error() is not None:
                failed.append(m)
                continue
            p = m.partition()
            g = generation.get(p)
            if g is None:
                continue
            offset, key, headers = m.offset(), m.key(), m.headers()
            append(Message(key.decode("utf-8", "replace") if key is not None
                           else f"{p}-{offset}", m.value() or b"", (p, offset, g),
                           {k: (v or b"").decode("utf-8", "replace") for k, v in headers}
                           if headers else {}))
            if (p, g) not in upto:
                first[p] = offset
            upto[p, g] = offset + 1  # a partition's records come in order
        self._held.handed_out(first, upto)
        return messages, failed

    def _offsets(self, upto: dict[int, int]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(self.client.topic, p, o) for p, o in sorted(upto.items())]

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if isinstance(messages, Polled):  # a whole read: its offsets are known already
            upto = messages.upto
        else:
            upto = {}
            for m in messages:
                partition, offset, generation = m.position
                upto[partition, generation] = max(upto.get((partition, generation), -1),
                                                  offset + 1)
        consumer = self.consumer
        error, self._commit_error = self._commit_error, None
        if error is None:
            # The outputs are durable already: note the acks (of the partitions still held;
            # a revoked one's new owner delivers those records again). The poll thread
            # commits them before its next poll, without waiting for the broker: a call
            # from this side would wait for the poll in progress (confluent-kafka lets one
            # call at a time use a consumer), up to the whole read timeout when idle.
            with self._held.lock:
                self._held.still_held(upto)
            return
        # An earlier commit failed (or could not be queued): commit this batch, which
        # covers the earlier ones, and wait for the broker's answer.
        log.info("a commit on %s failed (%s); committing synchronously", self.url.redacted,
                 error)
        try:
            done = await self.client.call(self._commit_held, consumer, upto, lane="commit")
        except Exception as exc:
            raise kafka_error("commit", self.url, exc) from None
        failed = [tp for tp in done if tp.error is not None]
        if failed:
            raise kafka_error("commit", self.url, str(failed[0].error))

    def _commit_held(self, consumer: Any, upto: dict[tuple[int, int], int]) -> list[Any]:
        with self._held.lock:  # a revoke waits for this commit, no longer
            held = self._held.still_held(upto)
            done = (consumer.commit(offsets=self._offsets(held), asynchronous=False) or []
                    ) if held else []
            if not any(tp.error is not None for tp in done):
                self._held.sent.update(held)
            return done

    def _commit_acked(self) -> None:
        """On the poll thread, before each poll: queue the commit of what was acknowledged
        since (no wait; the result comes back through on_commit while polling)."""
        with self._held.lock:  # on this thread, so no revoke can come in between
            due = self._held.to_commit()
        if due:
            try:
                self.consumer.commit(offsets=self._offsets(due), asynchronous=True)
            except Exception as exc:  # the next ack commits synchronously
                self._commit_error = reason(exc)

    async def lag(self) -> int | None:
        """Records after the consumer's position, up to each partition's high watermark."""
        consumer = self.consumer
        if consumer is None:
            return None
        return await self.client.call(self._lag, consumer, lane="commit")

    def _lag(self, consumer: Any) -> int | None:
        """Of this engine's partitions; until its first assignment, of the whole topic (what
        the group has not read yet)."""
        total = 0
        mine = consumer.assignment() if self._joined else self._offsets(
            dict.fromkeys(self._partitions, -1001))  # -1001: no offset
        for tp in consumer.position(mine):
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

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._held.assign([tp.partition for tp in partitions])
        self._joined = True
        log.info("%s: partitions %s assigned", self.url.redacted,
                 [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Handed to another engine: commit the latest acks of those partitions now and
        never again (an ack that comes later is dropped); what was handed out and not
        acknowledged is read again by the new owner, from the committed offset."""
        acked, unacked = self._held.release([tp.partition for tp in partitions])
        log.info("%s: partitions %s revoked; %d record(s) handed out and not acknowledged "
                 "go to their next owner", self.url.redacted,
                 [tp.partition for tp in partitions], unacked)
        if not acked:
            return
        try:  # waits behind the queued commits of the same partitions
            consumer.commit(offsets=self._offsets(acked), asynchronous=False)
        except Exception as exc:
            log.warning("commit on revoke on %s failed (those records come again): %s",
                        self.url.redacted, reason(exc))

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        """Taken away without a revoke (this engine missed its session timeout): they may
        belong to another engine already, so nothing is committed for them any more."""
        _acked, unacked = self._held.release([tp.partition for tp in partitions])
        log.warning("%s: partitions %s lost (session timed out); %d record(s) handed out "
                    "come again", self.url.redacted, [tp.partition for tp in partitions],
                    unacked)

    def _last_commit_and_close(self, consumer: Any) -> None:
        """Make sure the latest acks are committed before leaving the group (a clean stop
        leaves nothing to deliver again), then close."""
        acked, _unacked = self._held.release(list(self._held.generation))
        try:
            if acked:
                consumer.commit(offsets=self._offsets(acked), asynchronous=False)
        except Exception as exc:
            log.warning("final commit on %s failed (those records come again): %s",
                        self.url.redacted, reason(exc))
        consumer.close()

    async def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        await self.client.shutdown(
            (lambda: self._last_commit_and_close(consumer)) if consumer is not None
            else None)


def open_source(url: StreamURL, *, group: str) -> KafkaSource:
    return KafkaSource(url, group)


def open_sink(url: StreamURL) -> KafkaSink:
    return KafkaSink(url)
