"""``amqp://USER:PASSWORD@HOST:PORT/QUEUE``: RabbitMQ (AMQP 0-9-1) via aio-pika.

The path names a durable queue (declared if missing), not a virtual host: the virtual host
is ``?vhost=`` (default ``/``). User and password default to ``guest``; the password may
come from ``?password_env=``/``?password_file=`` instead of the URL. TLS: ``amqps://``
(default port 5671) with ``?ca=``, and ``?cert=``/``?key=`` when the broker asks for client
certificates (``ssl_options.fail_if_no_peer_cert``); the broker's certificate and host name
are always verified.

Source: consumes with manual acknowledgements and a prefetch of four micro-batches (four
times the ``max_records`` of the first read, or ``?prefetch=N`` messages), so the broker
never hands this engine much more than the batches in flight. A batch is acknowledged with
one ``basic.ack`` (``multiple``) on its highest delivery tag; the pipeline acknowledges
batches in the order they were read. Every group reading a queue shares it (competing
consumers): give each binding its own queue. A message delivered on a connection that has
since closed was put back by the broker, so it is never acknowledged through the new one;
after a reconnect it arrives again. The record key is the ``key`` header (else the
``message_id`` property); other headers become message headers.

Sink: a channel with publisher confirms; each record is published persistent
(``delivery_mode=2``) and ``mandatory`` to the queue through the default exchange, with the
key as the ``key`` header, and ``write`` returns once every confirm arrived (``?timeout=``
seconds each, default 30). Broker errors close the connection; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from baton.streams.base import Message, OptionKind, OutRecord, StreamError, StreamURL
from baton.streams.connectors._support import (
    KEY_HEADER,
    Inbox,
    address,
    number,
    reason,
    stream_error,
)
from baton.streams.security import PASSWORD_FROM, TLS_FILES

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("aio_pika", "aio-pika")
OPTIONS: dict[str, OptionKind] = {"vhost": "text", "prefetch": "count", "timeout": "number",
                                   **PASSWORD_FROM, **TLS_FILES}

log = logging.getLogger("baton.streams.amqp")
DEFAULT_PORT = 5672
TLS_PORT = 5671
#: Unacknowledged deliveries the broker may send, in micro-batches: the pipeline keeps a few
#: batches in flight, and reads the next while the previous ones are scored and written.
PREFETCH_BATCHES = 4


def _error(what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    return stream_error("amqp", what, url, exc)


def _failures() -> tuple[type[BaseException], ...]:
    from aio_pika.exceptions import CONNECTION_EXCEPTIONS

    return (*CONNECTION_EXCEPTIONS, TimeoutError)


class _Connection:
    """One connection and channel to the queue, reopened after the broker drops it."""

    def __init__(self, url: StreamURL, name: str, confirms: bool) -> None:
        self.url = url
        self.name = name
        self.confirms = confirms
        self.connection: Any = None
        self.channel: Any = None
        self.queue: Any = None
        self.generation = 0
        self.lost = ""

    @property
    def broken(self) -> bool:
        return self.channel is None or self.channel.is_closed or self.connection.is_closed

    async def open(self) -> None:
        import aio_pika
        from aio_pika.connection import make_url

        await self.close()
        if not self.url.name:
            raise _error("open", self.url, "the URL names no queue (amqp://HOST:PORT/QUEUE)")
        host, port = address(self.url, TLS_PORT if self.url.tls else DEFAULT_PORT)
        # Made here rather than by aio_pika.connect(), which drops a connection that failed to
        # open unclosed: its __del__ then leaves a close() coroutine nobody awaits.
        self.connection = aio_pika.Connection(
            make_url(host=host, port=port, login=self.url.username or "guest",
                     password=self.url.password or "guest",
                     virtualhost=self.url.option("vhost", "/"), ssl=self.url.tls),
            ssl_context=self.url.tls_context, client_properties={"connection_name": self.name})
        try:
            await self.connection.connect(timeout=10)
            self.connection.close_callbacks.add(self._on_close)
            self.channel = await self.connection.channel(publisher_confirms=self.confirms)
            self.queue = await self.channel.declare_queue(self.url.name, durable=True)
        except _failures() as exc:
            await self.close()
            raise _error("connect", self.url, exc) from None
        self.generation += 1
        self.lost = ""

    def _on_close(self, _sender: Any, exc: BaseException | None) -> None:
        self.lost = f"the broker closed the connection ({reason(exc) if exc else 'closed'})"

    async def close(self) -> None:
        connection, self.connection, self.channel, self.queue = self.connection, None, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except _failures() as exc:
                log.debug("closing %s: %s", self.url.redacted, reason(exc))


class RabbitSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.conn = _Connection(url, f"baton {group} <- {url.name}", confirms=False)
        self.inbox: Inbox[tuple[int, Any]] = Inbox()
        self.consuming = False

    async def open(self) -> None:
        self.consuming = False
        self.inbox.clear()  # whatever it held was put back by the broker with its channel
        await self.conn.open()

    async def _consume(self, prefetch: int) -> None:
        generation = self.conn.generation

        async def deliver(message: Any) -> None:
            self.inbox.put((generation, message))

        try:
            await self.conn.channel.set_qos(prefetch_count=prefetch)
            await self.conn.queue.consume(deliver, no_ack=False)
        except _failures() as exc:
            raise _error("consume", self.url, exc) from None
        self.consuming = True

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        if self.conn.broken:
            await self.open()
        if not self.consuming:
            await self._consume(int(number(self.url, "prefetch", 0)) or
                                max_records * PREFETCH_BATCHES)
        got = await self.inbox.take(max_records, timeout)
        if not got and self.conn.broken:
            raise _error("consume", self.url, self.conn.lost or "the channel closed")
        return [self._message(generation, m) for generation, m in got]

    def _message(self, generation: int, m: Any) -> Message:
        headers = {str(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                   for k, v in (m.headers or {}).items()}
        key = headers.pop(KEY_HEADER, None) or m.message_id
        return Message(key, m.body, (generation, m), headers)

    async def ack(self, messages: Sequence[Message]) -> None:
        # One basic.ack(multiple=True) on the highest delivery tag of the batch: batches are
        # acknowledged in delivery order, so every lower tag on this channel is this batch's
        # or an earlier, already processed one's.
        last = None
        for msg in messages:
            generation, m = msg.position
            if generation != self.conn.generation or self.conn.broken:
                continue  # its channel closed: the broker delivers it again
            if last is None or m.delivery_tag > last.delivery_tag:
                last = m
        if last is None:
            return
        try:
            await last.ack(multiple=True)
        except _failures() as exc:  # the channel died under us: same as above
            log.info("ack on %s skipped, the batch will be redelivered: %s",
                     self.url.redacted, reason(exc))

    async def lag(self) -> int | None:
        """Messages ready in the queue plus those delivered here and not yet read (the
        broker's ready count leaves out deliveries waiting in this engine's prefetch)."""
        if self.conn.broken:
            return None
        queue = await self.conn.channel.declare_queue(self.url.name, passive=True)
        ready = queue.declaration_result.message_count
        return int(ready or 0) + len(self.inbox)

    async def close(self) -> None:
        self.consuming = False
        await self.conn.close()


class RabbitSink:
    def __init__(self, url: StreamURL) -> None:
        self.url = url
        self.timeout = number(url, "timeout", 30)
        self.conn = _Connection(url, f"baton -> {url.name}", confirms=True)

    async def open(self) -> None:
        await self.conn.open()

    async def write(self, records: Sequence[OutRecord]) -> None:
        import aio_pika

        if not records:
            return
        if self.conn.broken:
            await self.conn.open()
        exchange = self.conn.channel.default_exchange
        sent = [exchange.publish(
            aio_pika.Message(r.value, headers={**r.headers, **(
                {KEY_HEADER: r.key} if r.key is not None else {})},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self.url.name, mandatory=True, timeout=self.timeout)
            for r in records]
        results = await asyncio.gather(*sent, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            why = self.conn.lost or reason(failed[0])
            await self.conn.close()  # a clean channel for the retry
            if not isinstance(failed[0], _failures()):
                raise failed[0]
            raise _error("publish", self.url, why)

    async def close(self) -> None:
        await self.conn.close()


def open_source(url: StreamURL, *, group: str) -> RabbitSource:
    return RabbitSource(url, group)


def open_sink(url: StreamURL) -> RabbitSink:
    return RabbitSink(url)
