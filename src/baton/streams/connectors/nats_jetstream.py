"""``nats://HOST:PORT/SUBJECT?stream=NAME``: NATS JetStream via nats-py.

The stream (default name: the subject in capitals, ``.`` and other separators as ``_``) is
created with file storage and the subject when it does not exist.

Source: a durable pull consumer named after the group (``?group=``; characters NATS does
not allow become ``_``), explicit acks, delivering the whole stream the first time. A batch
is acknowledged with one ack per message and a single flush, so the server has read every
ack when ``ack`` returns (an ack lost on the way only means a redelivery after
``ack_wait``). While messages are handed out and not acknowledged, the source tells the
server every half ``ack_wait`` that they are still being worked on (``+WPI``), so a batch
held longer (a model restarting, a sink refusing writes) is not sent again while it is
still in the pipeline. Messages handed out and not acknowledged are NAKed on close, so
they come again at once; after a crash the server sends them again once ``ack_wait``
passes (``?ack_wait=`` seconds, default 30, applied when the consumer is created; change
it by deleting the consumer). The record key is the ``key`` header, else the stream sequence;
other headers become message headers.

Sink: JetStream publish with the key as ``key`` header, every publish acknowledged by the
stream (``?timeout=`` seconds, default 10) before ``write`` returns.

The client reconnects by itself (forever) after the server goes away; reads and writes in
the meantime fail with a StreamError, which the pipeline retries.

Credentials: a user and password (``nats://USER:PASSWORD@...``, or the password from
``?password_env=``/``?password_file=``), a token (``?token_env=``/``?token_file=``), or a
NATS credentials file (``?creds=PATH``: a user JWT and its NKey seed). TLS: ``?tls=true``,
with ``?ca=`` and ``?cert=``/``?key=`` (the server's ``verify`` asks for client
certificates); the server's certificate and host name are always verified.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from baton.streams.base import (
    Message,
    OptionKind,
    OutRecord,
    StreamError,
    StreamURL,
    bad_url,
)
from baton.streams.connectors._support import (
    KEY_HEADER,
    address,
    number,
    probe,
    reason,
    safe_name,
    stream_error,
)
from baton.streams.security import PASSWORD_FROM, TLS_FILES, TLS_SWITCH, TOKEN_FROM

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("nats", "nats-py")
OPTIONS: dict[str, OptionKind] = {"stream": "text", "group": "text", "ack_wait": "number",
                                   "timeout": "number", "creds": "file", **PASSWORD_FROM,
                                   **TOKEN_FROM, **TLS_SWITCH, **TLS_FILES}

log = logging.getLogger("baton.streams.nats")
DEFAULT_PORT = 4222


def _error(what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    return stream_error("nats", what, url, exc)


def _failures() -> tuple[type[BaseException], ...]:
    import nats.errors

    return (nats.errors.Error, OSError, TimeoutError)


class _EofNoise(logging.Filter):
    """nats-py's protocol answers True to ``eof_received``, which asyncio's TLS transport
    ignores with a warning at every close of a TLS connection: noise an operator would
    chase. Only that exact line is dropped."""

    LINE = "returning true from eof_received() has no effect when using ssl"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.LINE


_EOF_NOISE = _EofNoise()


def _server_options(url: StreamURL) -> dict[str, Any]:
    """Where and as whom to connect: the server URL carries no credentials (nats-py would
    show it in its errors), they travel as options."""
    host, port = address(url, DEFAULT_PORT)
    options: dict[str, Any] = {"servers": [f"{'tls' if url.tls else 'nats'}://{host}:{port}"]}
    if url.username is not None:
        options.update(user=url.username, password=url.password)
    if url.token is not None:
        options["token"] = url.token
    if "creds" in url.options:
        options["user_credentials"] = url.options["creds"]
    if url.tls_context is not None:
        options.update(tls=url.tls_context, tls_hostname=host)
        logging.getLogger("asyncio").addFilter(_EOF_NOISE)  # once: a filter is a set member
    return options


def check(url: StreamURL) -> None:
    """One way to authenticate: a user, a token or a credentials file."""
    if url.password is not None and url.username is None:
        source = next((o for o in PASSWORD_FROM if o in url.options), "password")
        raise bad_url(url.raw, source, "a NATS password needs its user "
                      "(nats://USER:PASSWORD@...); for a token use ?token_env= or ?token_file=")
    ways = [w for w, given in (("a user in the URL", url.username is not None),
                               ("a token", url.token is not None),
                               ("?creds=", "creds" in url.options)) if given]
    if len(ways) > 1:
        raise bad_url(url.raw, "creds" if "creds" in url.options else "token_env",
                      f"NATS takes one way to authenticate, this URL gives {' and '.join(ways)}")


class _Connection:
    """A client connection plus the JetStream stream that holds the subject."""

    def __init__(self, url: StreamURL, name: str) -> None:
        self.url = url
        self.name = name
        self.subject = url.name
        self.stream = url.option("stream", safe_name(self.subject).upper())
        self.nc: Any = None
        self.js: Any = None
        self.lost = ""
        self._refused: asyncio.Event | None = None

    async def open(self) -> None:
        await self.close()
        if not self.subject:
            raise _error("open", self.url, "the URL names no subject (nats://HOST:PORT/SUBJECT)")
        await probe(self.url, DEFAULT_PORT, "nats")
        self.lost = ""
        try:
            self.nc = await self._connect()
            self.js = self.nc.jetstream()
            await self._ensure_stream()
        except _failures() as exc:
            why = self.lost or reason(exc)  # the server's own words (Authorization Violation)
            await self.close()
            raise _error("connect", self.url, why) from None

    async def _connect(self) -> Any:
        """nats-py retries a first connection forever when reconnecting is on (wanted once
        connected): the first error it reports (wrong password, TLS refused) ends the try."""
        import nats

        self._refused = asyncio.Event()
        connecting = asyncio.ensure_future(nats.connect(
            **_server_options(self.url), name=self.name, connect_timeout=5,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=self._on_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect))
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({connecting, refused}, timeout=15,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            self._refused = None
        if connecting.done():
            return connecting.result()
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        raise TimeoutError(self.lost or "no answer within 15s")

    async def _ensure_stream(self) -> None:
        from nats.js.errors import NotFoundError

        try:
            await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(name=self.stream, subjects=[self.subject])
            log.info("created JetStream stream %s for %s", self.stream, self.subject)

    async def _on_error(self, exc: Exception) -> None:
        if self._refused is not None:  # connecting for the first time: the first error
            if not self._refused.is_set():  # is the cause (a broken pipe may follow it)
                self.lost = reason(exc)
                self._refused.set()
            return
        self.lost = reason(exc)

    async def _on_disconnect(self) -> None:
        self.lost = f"disconnected from {self.url.redacted}; reconnecting"

    async def _on_reconnect(self) -> None:
        log.info("reconnected to %s", self.url.redacted)

    def why(self, exc: BaseException) -> str:
        if self.nc is not None and not self.nc.is_connected:
            return self.lost or "not connected"
        return reason(exc)

    async def close(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except _failures() as exc:
                log.debug("closing %s: %s", self.url.redacted, reason(exc))


class NatsSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.durable = safe_name(url.option("group", group))
        self.conn = _Connection(url, f"baton {self.durable}")
        self.ack_wait = number(url, "ack_wait", 30)
        self.sub: Any = None
        self.unacked: dict[int, Any] = {}
        self._progress: asyncio.Task[None] | None = None

    async def open(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await self.close()
        await self.conn.open()
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                ack_wait=self.ack_wait)
        try:
            self.sub = await self.conn.js.pull_subscribe(
                self.conn.subject, durable=self.durable, stream=self.conn.stream, config=config)
            # An existing consumer keeps the ack_wait it was created with: use that one.
            info = await self.sub.consumer_info()
        except _failures() as exc:
            await self.close()
            raise _error("create consumer", self.url, exc) from None
        self.ack_wait = float(info.config.ack_wait or self.ack_wait or 30)

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        try:
            got = await self.sub.fetch(max_records, timeout=timeout)
        except TimeoutError as exc:  # nats-py raises its own or asyncio's: nothing came
            if not self.conn.nc.is_connected:
                raise _error("fetch", self.url, self.conn.why(exc)) from None
            return []
        except _failures() as exc:
            raise _error("fetch", self.url, self.conn.why(exc)) from None
        for m in got:
            self.unacked[id(m)] = m
        if got and (self._progress is None or self._progress.done()):
            self._progress = asyncio.create_task(self._report_progress())
        return [self._message(m) for m in got]

    async def _report_progress(self) -> None:
        """Every half ack_wait while messages are held: ``+WPI`` for each, which restarts
        its ack_wait, so the server never sends again what the pipeline still holds."""
        while self.unacked:
            await asyncio.sleep(self.ack_wait / 2)
            held, nc = list(self.unacked.values()), self.conn.nc
            if not held or nc is None or not nc.is_connected:
                continue  # disconnected: the ack, or a redelivery after ack_wait, follows
            try:
                await asyncio.gather(*(m.in_progress() for m in held))
            except _failures() as exc:
                log.info("progress report on %s failed: %s", self.url.redacted, reason(exc))

    def _message(self, m: Any) -> Message:
        headers = dict(m.headers or {})
        key = headers.pop(KEY_HEADER, None)
        if key is None:
            key = str(m.metadata.sequence.stream)
        return Message(key, m.data, m, headers)

    async def ack(self, messages: Sequence[Message]) -> None:
        from nats.errors import MsgAlreadyAckdError

        if not messages:
            return
        nc = self.conn.nc
        if nc is None or not nc.is_connected:  # nats-py would buffer the acks meanwhile
            raise _error("ack", self.url, self.conn.lost or "not connected")
        try:
            for m in messages:
                try:
                    await m.position.ack()  # a publish to the reply subject, no round trip
                except MsgAlreadyAckdError:
                    pass
            await nc.flush(timeout=5)  # one PING/PONG: the server has read every ack
        except _failures() as exc:
            raise _error("ack", self.url, self.conn.why(exc)) from None
        for m in messages:
            self.unacked.pop(id(m.position), None)

    async def lag(self) -> int | None:
        """Messages the durable consumer has not delivered yet (``num_pending``)."""
        if self.sub is None or not self.conn.nc.is_connected:
            return None
        info = await self.sub.consumer_info()
        return int(info.num_pending) if info.num_pending is not None else None

    async def close(self) -> None:
        pending, self.unacked = list(self.unacked.values()), {}
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
        if pending and self.conn.nc is not None and self.conn.nc.is_connected:
            try:  # handed out, never processed: let the next consumer have them now
                await asyncio.gather(*(m.nak() for m in pending))
            except _failures() as exc:
                log.info("NAK on close failed (redelivered after ack_wait): %s", reason(exc))
        self.sub = None
        await self.conn.close()


class NatsSink:
    def __init__(self, url: StreamURL) -> None:
        self.url = url
        self.timeout = number(url, "timeout", 10)
        self.conn = _Connection(url, "baton sink")

    async def open(self) -> None:
        await self.conn.open()

    async def write(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        if not self.conn.nc.is_connected:  # nats-py would buffer them until it reconnects
            raise _error("publish", self.url, self.conn.lost or "not connected")
        js = self.conn.js
        results = await asyncio.gather(*(js.publish(
            self.conn.subject, r.value, timeout=self.timeout,
            headers={**r.headers, **({KEY_HEADER: r.key} if r.key is not None else {})}
            or None) for r in records), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if not isinstance(failed[0], _failures()):
                raise failed[0]
            raise _error("publish", self.url, self.conn.why(failed[0]))

    async def close(self) -> None:
        await self.conn.close()


def open_source(url: StreamURL, *, group: str) -> NatsSource:
    return NatsSource(url, group)


def open_sink(url: StreamURL) -> NatsSink:
    return NatsSink(url)
