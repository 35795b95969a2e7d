"""What the broker connectors share: reaching a broker, naming it in errors, an inbox.

Not a connector: no ``open_source``/``open_sink`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from baton.streams.base import StreamError, StreamURL

T = TypeVar("T")

#: The header (NATS, AMQP) or user property (MQTT 5) that carries a record's key.
KEY_HEADER = "key"


def reason(exc: BaseException) -> str:
    """A one-line reason: the exception's text, or its type when it has none."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stream_error(broker: str, what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    why = exc if isinstance(exc, str) else reason(exc)
    return StreamError(f"{broker} {what} on {url.redacted} failed: {explain(why, url)}",
                       details={"url": url.redacted})


def scrub(text: str, url: StreamURL) -> str:
    """``text`` without the URL's secrets, whatever a client library put in its message."""
    for secret in (url.password, url.token):
        if secret:
            text = text.replace(secret, "***")
    return text


#: What clients say when a TLS handshake meets a plain listener or the reverse.
_PLAIN_MEETS_TLS = ("connection reset", "connection closed", "closed by server",
                    "connection lost", "eof", "unexpected end", "broken pipe",
                    "wrong version number", "record layer failure", "packet length too long",
                    "transport failure", "disconnected", "before accepting")
#: TLS alerts a broker sends about the client's certificate (missing or not trusted).
_CLIENT_CERT_REFUSED = ("certificate required", "certificate_required", "bad certificate",
                        "bad_certificate", "unknown ca", "unknown_ca")


def explain(why: str, url: StreamURL) -> str:
    """A client's reason, secrets scrubbed, with the likely TLS cause when there is one."""
    why = scrub(why, url)
    low = why.lower()
    if not url.tls and ("ssl" in low or "tls" in low or "certificate" in low):
        return f"{why} (the broker requires TLS: use {secure_form(url)} with ?ca=PATH)"
    if "certificate verify failed" in low or "certificate_verify_failed" in low:
        return (f"{why} (TLS: the broker's certificate is not signed by a trusted authority "
                f"for this host: give the authority that signed it with ?ca=PATH)")
    if any(sign in low for sign in _CLIENT_CERT_REFUSED):
        return (f"{why} (TLS: the broker wants a client certificate it trusts: give one "
                f"with ?cert=PATH&key=PATH)")
    if any(sign in low for sign in _PLAIN_MEETS_TLS):
        return (f"{why} (if the broker expects TLS, use {secure_form(url)})"
                if not url.tls else
                f"{why} (the broker may not speak TLS on this port, or it refused the "
                f"client certificate (?cert=, ?key=))")
    return why


def secure_form(url: StreamURL) -> str:
    plain_to_secure = {"redis": "rediss://", "amqp": "amqps://", "mqtt": "mqtts://"}
    return plain_to_secure.get(url.scheme, "?tls=true")


def number(url: StreamURL, key: str, default: float) -> float:
    """A numeric ``?key=`` option (>= 0), or a StreamError naming it."""
    raw = url.options.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StreamError(f"option {key}={raw!r} in {url.redacted} must be a number >= 0",
                          details={"url": url.redacted})
    return value


def address(url: StreamURL, default_port: int) -> tuple[str, int]:
    return url.host or "127.0.0.1", url.port or default_port


async def probe(url: StreamURL, default_port: int, broker: str, timeout: float = 5.0) -> None:
    """Fail fast and clearly when nothing listens at the broker's address.

    Client libraries tend to retry a refused first connection for a long time (or forever);
    the pipeline already retries ``open()`` with backoff, so one quick TCP check is enough.
    """
    host, port = address(url, default_port)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise StreamError(f"cannot reach the {broker} broker at {host}:{port} for "
                          f"{url.redacted}: {reason(exc)}", details={"url": url.redacted}) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def safe_name(text: str) -> str:
    """A name brokers accept for durable consumers, streams and client ids."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class Inbox(Generic[T]):
    """Messages pushed by a client callback, taken in batches by ``Source.read``.

    ``put`` must run on the event loop (threads use ``loop.call_soon_threadsafe``). Taking
    never loses an item: an ``asyncio.Event`` is waited for, not a queue ``get``.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def discard(self, stale: Callable[[T], bool]) -> None:
        self._items = deque(item for item in self._items if not stale(item))

    async def take(self, max_items: int, timeout: float) -> list[T]:
        if not self._items:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        out: list[T] = []
        while self._items and len(out) < max_items:
            out.append(self._items.popleft())
        return out
