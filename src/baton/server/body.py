"""Reading a request body: within the size limit, inflated when sent compressed."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from baton.errors import PayloadTooLarge, RequestError, UnsupportedEncoding

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    encoding = b""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body of {int(value)} bytes exceeds the "
                                  f"limit of {limit} bytes", details={"limit": limit})
        if key == b"content-encoding":
            encoding = value.strip().lower()
    chunks, size = [], 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                  details={"limit": limit})
        chunks.append(chunk)
        if not msg.get("more_body"):
            body: bytes = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return _decoded(encoding, body, limit) if encoding else body


_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS, b"identity": 0}


def _decoded(encoding: bytes, body: bytes, limit: int) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate (tritonclient's request
    compression), inflated to at most ``limit`` bytes: the limit holds for what is read,
    not only for what was sent."""
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is "
                                  "not supported; send gzip, deflate or an uncompressed body",
                                  details={"field": "Content-Encoding"})
    if not wbits:
        return body
    inflate = zlib.decompressobj(wbits)
    try:
        out = inflate.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"the body is not valid {encoding.decode()} data: {exc}",
                           details={"field": "Content-Encoding"}) from None
    if len(out) > limit:
        raise PayloadTooLarge(f"request body inflates beyond the limit of {limit} bytes",
                              details={"limit": limit})
    if not inflate.eof or inflate.unused_data:
        how = "is cut short" if not inflate.eof else "has bytes after its end"
        raise RequestError(f"the {encoding.decode()} body {how}",
                           details={"field": "Content-Encoding"})
    return out
