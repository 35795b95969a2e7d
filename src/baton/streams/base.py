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
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from baton.errors import BatonError, SettingsError
from baton.settings import Settings
from baton.streams import security

#: What a ``?option=`` must be: ``text``, ``number`` (>= 0), ``count`` (a whole number >= 0),
#: ``file`` (the path of a readable file: a certificate, a password) or one of the values
#: given. Each connector module declares the options it reads in
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
    # TLS: the same connectors (see baton.streams.security)
    "rediss": "baton.streams.connectors.redis_streams",
    "amqps": "baton.streams.connectors.rabbitmq",
    "mqtts": "baton.streams.connectors.mqtt",
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


@dataclass(frozen=True, repr=False)
class StreamURL:
    """``scheme://host:port/path?option=value``, parsed once.

    ``password`` and ``token`` are the secrets resolved from the user-info part or from
    ``?password_env=``/``?password_file=`` (``token_*`` for NATS); ``repr`` shows only the
    redacted URL, so that no log of this object shows them. ``tls_context`` is the client
    TLS context (None without TLS), built and checked when the URL was read.
    """

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    options: dict[str, str]
    username: str | None = None
    password: str | None = None
    token: str | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"StreamURL({self.redacted!r})"

    @property
    def tls(self) -> bool:
        """Encrypted: a secure scheme (``rediss``, ``amqps``, ``mqtts``) or ``?tls=true``."""
        return security.tls_enabled(self.scheme, self.options)

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
    """``amqp://user:secret@host/q`` -> ``amqp://user:***@host/q``: the password of the
    user-info part and the value of any secret-looking query option are masked; a URL
    without either is unchanged. What every log, error, ``/v1/models`` and ``/v1/stats``
    shows of a stream URL."""
    parts = urlsplit(raw)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    elif not at and not _port_ok(hostport):  # "user:secret" with the "@host" forgotten
        parts = parts._replace(netloc=f"{hostport.partition(':')[0]}:***")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in security.SECRET_OPTIONS for k, _ in query):
        parts = parts._replace(query=urlencode(
            [(k, "***" if k.lower() in security.SECRET_OPTIONS else v) for k, v in query],
            safe="*/"))
    return urlunsplit(parts)


def _port_ok(hostport: str) -> bool:
    if hostport.startswith("["):  # [::1]:port
        hostport = hostport.rpartition("]")[2]
    port = hostport.rpartition(":")[2] if ":" in hostport else ""
    return port == "" or port.isdigit()


def parse_url(raw: str) -> StreamURL:
    parts = urlsplit(raw)
    if parts.scheme not in CONNECTORS:
        raise StreamError(f"unknown stream scheme in {redact_url(raw)!r}; known: "
                          f"{', '.join(sorted(CONNECTORS))}", code="UNKNOWN_SCHEME",
                          details={"url": redact_url(raw)})
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range (the text may hold a password)
        raise StreamError(f"bad stream URL {redact_url(raw)!r}: the port must be a number "
                          f"from 0 to 65535", code="BAD_STREAM_URL",
                          details={"url": redact_url(raw)}) from None
    connector = importlib.import_module(CONNECTORS[parts.scheme])
    _require_client(parts.scheme, connector.CLIENT, raw)
    options = dict(parse_qsl(parts.query))
    try:
        security.refuse_secrets_in_query(parts.scheme, options)
        _check_options(parts.scheme, connector.OPTIONS, options)
        creds = security.resolve(parts.scheme, options,
                                 unquote(parts.password) if parts.password else None,
                                 connector.OPTIONS)
    except security.UrlProblem as exc:
        raise bad_url(raw, exc.option, exc.problem) from None
    path = unquote(parts.path)
    if parts.scheme == "file" and parts.netloc:  # file://relative/path.jsonl
        path = parts.netloc + path
    url = StreamURL(raw, parts.scheme, parts.hostname or "", port, path, options,
                    unquote(parts.username) if parts.username else None, creds.password,
                    creds.token, creds.context)
    check = getattr(connector, "check", None)
    if check is not None:  # what only this connector knows (Kafka: SASL needs a user)
        check(url)
    return url


def check_url(raw: str, *, setting: str) -> None:
    """Refuse, as an ``INVALID_SETTING`` naming ``setting`` and its variable, a value that
    is not a stream URL a connector takes (the password masked in the message)."""
    try:
        problem = "" if parse_url(raw).name else "it names no file, stream, topic or queue"
    except StreamError as exc:
        problem = exc.message
    if problem:
        raise SettingsError(
            f"setting {setting} (BATON_{setting.upper()}) must be a stream URL such as "
            f"file:///PATH.jsonl or redis://HOST:PORT/STREAM, got {redact_url(raw)!r}: "
            f"{problem}", details={"field": setting})


def check_settings(settings: Settings) -> None:
    """The stream URLs among an operator's settings (``Settings.stream_urls``), checked by
    every command right after it reads its settings: settings know no stream schemes."""
    for name, url in settings.stream_urls().items():
        check_url(url, setting=name)


def url_secrets(raw: str) -> list[str]:
    """The password and token ``raw`` resolves to (to scrub them from any text)."""
    url = parse_url(raw)
    return [s for s in (url.password, url.token) if s]


def bad_url(raw: str, option: str, problem: str) -> StreamError:
    """``BAD_STREAM_URL`` naming the URL (password masked) and the option at fault."""
    return StreamError(f"bad stream URL {redact_url(raw)!r}: {problem}",
                       code="BAD_STREAM_URL", details={"url": redact_url(raw),
                                                       "option": option})


def _check_options(scheme: str, known: dict[str, OptionKind], options: dict[str, str]) -> None:
    """Every option must be one the connector reads (its ``OPTIONS``), of the right kind."""
    for key, value in options.items():
        kind = known.get(key)
        if kind is None and key == "tls" and scheme in security.SECURE_SCHEMES.values():
            secure = next(s for s, p in security.SECURE_SCHEMES.items() if p == scheme)
            problem = f"{scheme}:// has no ?tls= option: for TLS use {secure}://"
        elif kind is None:
            problem = (f"unknown option ?{key}= for {scheme}:// (known: "
                       f"{', '.join(sorted(known)) or 'none'})")
        elif kind == "text":
            continue
        elif kind == "file":
            security.check_file(key, value)
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
        raise security.UrlProblem(key, problem)


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
