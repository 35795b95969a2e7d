"""The sink half of the Kafka connector (:mod:`baton.streams.connectors.kafka`, whose
docstring says what a write guarantees): an idempotent producer, one ``produce`` call per
record and one ``flush`` per write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from baton.streams.base import OutRecord, StreamURL
from baton.streams.connectors._kafka_client import KafkaClient, kafka_error
from baton.streams.connectors._support import reason


class KafkaSink:
    def __init__(self, url: StreamURL) -> None:
        self.client = KafkaClient(url)
        self.url = url
        # Delivery reports only for failures: a success needs no Python callback (each one
        # would wait for the GIL on the client's thread), flush() returning 0 says it.
        self.client.config.update({"enable.idempotence": True, "acks": "all",
                                   "linger.ms": 2, "delivery.report.only.error": True})
        self.producer: Any = None
        #: The failed deliveries of the current producer's current write.
        self._failures: list[str] = []

    async def open(self) -> None:
        from confluent_kafka import Producer

        await self.close()
        # One delivery callback for the producer, not one per record (produce() is about
        # twice as fast without): it gets the failures only, and each producer its own
        # list, so a late report of a dropped producer never counts against a new one.
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        self.producer = self.client.create(
            lambda config: Producer({**config, "on_delivery": delivered}))
        self._failures = failures
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
        failures = self._failures
        failures.clear()
        self.client.take_error()  # an error from before this write says nothing about it
        produce, topic = self.producer.produce, self.client.topic
        for r in records:
            while True:
                try:  # the key as str: the client sends its UTF-8 bytes
                    if r.headers:
                        produce(topic, r.value, r.key, headers=list(r.headers.items()))
                    else:
                        produce(topic, r.value, r.key)
                    break
                except BufferError:  # the local queue is full: let it drain, then go on
                    self.producer.poll(0.1)
        left, why = self._flush()
        failures = list(failures)  # what came until now: later reports go to the old list
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
