"""The connection half of the Kafka connector (:mod:`baton.streams.connectors.kafka`):
librdkafka's settings for a URL, the client threads, the topic check every source and
sink does when it opens, and what a group member holds (:class:`Held`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from baton.streams.base import Message, StreamError, StreamURL
from baton.streams.connectors._support import address, number, probe, reason, stream_error

T = TypeVar("T")
log = logging.getLogger("baton.streams.kafka")
DEFAULT_PORT = 9092


def kafka_error(what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    return stream_error("kafka", what, url, exc)


def security_config(url: StreamURL) -> dict[str, str]:
    """librdkafka's security settings for ``url``: the protocol, SASL and TLS files."""
    sasl = url.options.get("sasl")
    protocol = {(False, False): "PLAINTEXT", (True, False): "SSL",
                (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[
        (url.tls, sasl is not None)]
    config = {"security.protocol": protocol}
    if sasl is not None:
        config.update({"sasl.mechanism": sasl, "sasl.username": url.username or "",
                       "sasl.password": url.password or ""})
    if url.tls:
        config["ssl.endpoint.identification.algorithm"] = "https"  # check the host name
    if "ca" in url.options:
        config["ssl.ca.location"] = url.options["ca"]
    if "cert" in url.options:  # a cert file without ?key= holds the key as well
        config["ssl.certificate.location"] = url.options["cert"]
        config["ssl.key.location"] = url.options.get("key", url.options["cert"])
    return config


class KafkaClient:
    """What source and sink share: the client thread, the connection check, the topic."""

    def __init__(self, url: StreamURL) -> None:
        self.url = url
        self.topic = url.name
        host, port = address(url, DEFAULT_PORT)
        # librdkafka logs every refused reconnect as an error; what matters reaches the
        # pipeline's log through error_cb and StreamError, so keep only critical lines.
        self.config: dict[str, Any] = {
            "bootstrap.servers": f"{host}:{port}", "logger": log, "log_level": 2,
            "error_cb": self._on_error, "reconnect.backoff.max.ms": 2000,
            **security_config(url)}
        self.timeout = number(url, "timeout", 30)
        self._threads: dict[str, ThreadPoolExecutor] = {}
        self._last_error: str | None = None

    def _on_error(self, err: Any) -> None:  # librdkafka thread-side errors, seen on poll
        self._last_error = str(err)

    def take_error(self) -> str | None:
        err, self._last_error = self._last_error, None
        return err

    def create(self, client_type: Callable[[dict[str, Any]], T]) -> T:
        try:
            return client_type(self.config)
        except Exception as exc:  # a bad option (?start=sometimes): say which URL
            raise kafka_error("configure", self.url, exc) from None

    async def call(self, fn: Callable[..., T], *args: Any, lane: str = "main") -> T:
        """Run a client call on the lane's own thread (calls of one lane stay in order)."""
        thread = self._threads.get(lane)
        if thread is None:
            thread = self._threads[lane] = ThreadPoolExecutor(
                1, thread_name_prefix=f"baton-kafka-{lane}")
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)

    async def check_topic(self, client: Any) -> list[int]:
        """Connect, make sure the topic exists (creating it), return its partitions."""
        if not self.topic:
            raise kafka_error("open", self.url, "the URL names no topic (kafka://HOST:PORT/TOPIC)")
        await probe(self.url, DEFAULT_PORT, "kafka")
        try:
            return await self.call(self._partitions, client)
        except StreamError:
            raise
        except Exception as exc:  # KafkaException, or anything the client raises
            # The client's own report says why (SASL refused, TLS handshake failed); the
            # exception only that the metadata never came.
            why = self.take_error()
            raise kafka_error("connect", self.url, f"{why}; {reason(exc)}" if why
                         else exc) from None

    def _metadata(self, client: Any, timeout: float = 10) -> Any:
        """The cluster's metadata; an error the client reports meanwhile (SASL refused, TLS
        handshake failed) ends the wait at once. Reports reach error_cb only while the
        client is polled, which list_topics does not do: poll between short tries."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout
        while True:
            try:
                return client.list_topics(timeout=min(1.0, timeout))
            except KafkaException:
                client.poll(0)  # nothing is assigned yet: this serves callbacks only
                if self._last_error is not None or time.monotonic() > deadline:
                    raise

    def _partitions(self, client: Any) -> list[int]:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        # The metadata of every topic: asking for this one by name would let a broker with
        # auto.create.topics.enable create it, with its own default partition count.
        found = self._metadata(client).topics.get(self.topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        admin = AdminClient({k: v for k, v in self.config.items()
                             if k not in ("error_cb", "on_commit")})
        count = max(1, int(number(self.url, "partitions", 1)))
        for future in admin.create_topics([NewTopic(self.topic, count)],
                                          operation_timeout=10).values():
            try:
                future.result(timeout=15)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):  # created meanwhile: fine
                    raise kafka_error("create topic", self.url, exc) from None
        found = client.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise kafka_error("open", self.url, f"topic {self.topic!r} has no partitions "
                                           f"({found.error if found else 'not found'})")
        return sorted(found.partitions)

    async def shutdown(self, last: Callable[[], Any] | None) -> None:
        """Let the other lanes finish what they run (a commit), then run ``last`` (close)."""
        lanes, self._threads = self._threads, {}
        main = lanes.pop("main", None)
        for other in lanes.values():
            await asyncio.to_thread(other.shutdown, True)
        if main is None:
            return
        try:
            if last is not None:
                await asyncio.get_running_loop().run_in_executor(main, last)
        except Exception as exc:
            log.warning("closing %s: %s", self.url.redacted, reason(exc))
        finally:
            main.shutdown(wait=False)


class Polled(list[Message]):
    """The messages of one read, and the next offset of each (partition, generation) in
    them: what acknowledging the whole read commits."""

    def __init__(self) -> None:
        super().__init__()
        self.upto: dict[tuple[int, int], int] = {}


class Held:
    """The partitions this engine holds, each with the generation of its assignment, and the
    offsets handed out and acknowledged in each. The client's poll thread (rebalance
    callbacks) and the acks meet here, under one lock, held by an ack from its check of
    the partitions until its commit is queued, so that no revoke comes in between."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation: dict[int, int] = {}
        self.first: dict[int, int] = {}  # partition -> the first offset handed out
        self.handed: dict[int, int] = {}  # partition -> the offset after the last handed out
        self.acked: dict[int, int] = {}  # partition -> the offset after the last acknowledged
        self.sent: dict[int, int] = {}  # partition -> the offset last queued for commit
        self._next = itertools.count()

    def assign(self, partitions: list[int]) -> None:
        with self.lock:
            for p in partitions:
                self.generation[p] = next(self._next)

    def release(self, partitions: list[int]) -> tuple[dict[int, int], int]:
        """Forget ``partitions``: their latest acks (to commit now, or never) and how many
        records were handed out of them and not acknowledged (their next owner reads those
        again from the committed offset)."""
        with self.lock:
            acked, unacked = {}, 0
            for p in partitions:
                self.generation.pop(p, None)
                self.sent.pop(p, None)
                done, first = self.acked.pop(p, None), self.first.pop(p, None)
                if done is not None:
                    acked[p] = done
                if first is not None:
                    unacked += self.handed.pop(p) - max(first, done or 0)
            return acked, unacked

    def handed_out(self, first: dict[int, int], upto: dict[tuple[int, int], int]) -> None:
        """Records were handed out: from ``first`` (partition -> offset) up to ``upto``
        ((partition, generation) -> next offset), of partitions held. Call under the lock."""
        for p, offset in first.items():
            self.first.setdefault(p, offset)
        for (p, _generation), offset in upto.items():
            self.handed[p] = offset

    def still_held(self, upto: dict[tuple[int, int], int]) -> dict[int, int]:
        """Of ``upto`` ((partition, generation) -> next offset), what this engine may still
        commit: partitions held since the records were handed out. Call under the lock."""
        held = {p: o for (p, g), o in upto.items() if self.generation.get(p) == g}
        self.acked.update(held)
        return held

    def to_commit(self) -> dict[int, int]:
        """The acks not queued for commit yet, now marked queued. Call under the lock."""
        due = {p: o for p, o in self.acked.items() if self.sent.get(p, -1) < o}
        self.sent.update(due)
        return due
