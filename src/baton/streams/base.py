"""The one small interface every connector implements, and the table that names them.

A connector is one module exposing ``open_source(url, options)`` and ``open_sink(url,
options)``, and declaring ``CLIENT`` and ``OPTIONS`` (see :data:`OptionKind`). Sources hand
out :class:`Message` batches and take acknowledgements; sinks write :class:`OutRecord`
batches and return only once the records are durable. The
pipeline acknowledges an input only after its output (or dead letter) was written, which
is what makes delivery at-least-once. A new connector is one module plus a line in
:data:`CONNECTORS`, and passes the shared conformance suite (tests/streams).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from baton.errors import BatonError

#: What a ``?option=`` must be: ``text``, ``number`` (>= 0), ``count`` (a whole number >= 0)
#: or one of the values given. Each connector module declares the options it reads in
#: ``OPTIONS`` (name -> kind) and its client library in ``CLIENT`` (module, package, or None);
#: parse_url checks both, so a typo, a bad value or a missing client is an error at start.
OptionKind = str | tuple[str, ...]

#: URL scheme -> connector module (resolved late, so unused clients are never imported).
CONNECTORS: dict[str, str] = {
    "file": "baton.streams.connectors.files",
    "redis": "baton.streams.connectors.redis_streams",
    "nats": "baton.streams.connectors.nats_jetstream",
    "amqp": "baton.streams.connectors.rabbitmq",
    "mqtt": "baton.streams.connectors.mqtt",
    "kafka": "baton.streams.connectors.kafka",
}


class StreamError(BatonError):
    """A stream could not be opened, read or written (broker down, bad URL, refused write)."""

    code = "STREAM_ERROR"
    exit_code = 8


@dataclass(slots=True)
class Message:
    """One input record: its key, its raw bytes and the connector's acknowledgement handle."""

    key: str | None
    value: bytes
    position: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class OutRecord:
    key: str | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamURL:
    """``scheme://host:port/path?option=value``, parsed once."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    options: dict[str, str]
    username: str | None = None
    password: str | None = None

    @property
    def name(self) -> str:
        """The path without its leading slash: a topic, stream, subject, queue or file."""
        return self.path.lstrip("/")

    @property
    def redacted(self) -> str:
        """The URL with its password hidden: what logs, errors and ``/v1/models`` show."""
        return redact_url(self.raw)

    def option(self, key: str, default: str) -> str:
        return self.options.get(key, default)


def redact_url(raw: str) -> str:
    """``amqp://user:secret@host/q`` -> ``amqp://user:***@host/q``; others unchanged."""
    parts = urlsplit(raw)
    if parts.password is None:
        return raw
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def parse_url(raw: str) -> StreamURL:
    parts = urlsplit(raw)
    if parts.scheme not in CONNECTORS:
        raise StreamError(f"unknown stream scheme in {redact_url(raw)!r}; known: "
                          f"{', '.join(sorted(CONNECTORS))}", code="UNKNOWN_SCHEME",
                          details={"url": redact_url(raw)})
    try:
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise StreamError(f"bad stream URL {redact_url(raw)!r}: {exc}", code="BAD_STREAM_URL",
                          details={"url": redact_url(raw)}) from None
    connector = importlib.import_module(CONNECTORS[parts.scheme])
    _require_client(parts.scheme, connector.CLIENT, raw)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    _check_options(parts.scheme, connector.OPTIONS, options, raw)
    path = unquote(parts.path)
    if parts.scheme == "file" and parts.netloc:  # file://relative/path.jsonl
        path = parts.netloc + path
    return StreamURL(raw, parts.scheme, parts.hostname or "", port, path, options,
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


def _check_options(scheme: str, known: dict[str, OptionKind], options: dict[str, str],
                   raw: str) -> None:
    """Every option must be one the connector reads (its ``OPTIONS``), of the right kind."""
    for key, value in options.items():
        kind = known.get(key)
        if kind is None:
            problem = (f"unknown option ?{key}= for {scheme}:// (known: "
                       f"{', '.join(sorted(known)) or 'none'})")
        elif kind == "text":
            continue
        elif kind == "number":
            try:
                ok = float(value) >= 0
            except ValueError:
                ok = False
            if ok:
                continue
            problem = f"option ?{key}={value!r} must be a number >= 0"
        elif kind == "count":
            if value.isdigit():
                continue
            problem = f"option ?{key}={value!r} must be a whole number >= 0"
        elif value in kind:
            continue
        else:
            problem = f"option ?{key}={value!r} must be one of {', '.join(kind)}"
        raise StreamError(f"bad stream URL {redact_url(raw)!r}: {problem}",
                          code="BAD_STREAM_URL", details={"url": redact_url(raw),
                                                          "option": key})


def _require_client(scheme: str, client: tuple[str, str] | None, raw: str) -> None:
    """The connector's client library (its ``CLIENT``: module, package) must be installed:
    without it a stream could only fail forever, so say so when the URL is read."""
    if client is None:
        return
    module, package = client
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package missing (paho for paho.mqtt)
        found = False
    if not found:
        raise StreamError(f"{scheme}:// streams need the {package} package, which is not "
                          f"installed: pip install 'baton[streams]'", code="CLIENT_MISSING",
                          details={"url": redact_url(raw), "package": package})


class Source(Protocol):
    async def open(self) -> None:
        """Connect; raise :class:`StreamError` with a clear message if impossible."""

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout`` seconds for the first."""

    async def ack(self, messages: Sequence[Message]) -> None:
        """Mark messages done: they will not be delivered again after a restart."""

    async def close(self) -> None: ...

    # Optional: ``async def lag(self) -> int | None``, the records in the input this source
    # has not read yet (its backlog), or None when it cannot tell. The pipeline samples it
    # every few seconds for /v1/models and ``baton_stream_lag_records``.


class Sink(Protocol):
    async def open(self) -> None: ...

    async def write(self, records: Sequence[OutRecord]) -> None:
        """Write records; return only once they are durable. Raise StreamError if refused."""

    async def close(self) -> None: ...


def _module(url: StreamURL) -> Any:
    return importlib.import_module(CONNECTORS[url.scheme])


def open_source(raw: str, *, group: str) -> Source:
    """The source for ``raw``; ``group`` names the consumer group / durable consumer."""
    url = parse_url(raw)
    source: Source = _module(url).open_source(url, group=group)
    return source


def open_sink(raw: str) -> Sink:
    url = parse_url(raw)
    sink: Sink = _module(url).open_sink(url)
    return sink
