"""HTTP only: a raw ASGI application over the engine (no framework on the hot path).

Routes follow the Open Inference Protocol V2 REST API, plus a records endpoint and an
OpenAPI document. Every error is JSON: ``{"error": message, "code": CODE, "details": ...}``
(``error`` stays a string so existing V2 clients can read it).

With a :class:`~baton.server.auth.Guard`, every request is admitted (or answered 401, 403
or 503) before it is routed. A metrics port, when given, is another listener of the same
server on which only ``GET /metrics`` answers, without a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from baton import __version__
from baton.dashboard import Dashboard
from baton.errors import (
    BatonError,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestError,
    RouteNotFound,
    UnsupportedEncoding,
)
from baton.monitor.metrics import CONTENT_TYPE
from baton.server.auth import CHALLENGE, Guard
from baton.server.openapi import openapi_document
from baton.serving import binary
from baton.serving.service import Engine

log = logging.getLogger("baton.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]
_INFER_HEADER = binary.HEADER.lower().encode()


class _Response(Exception):
    """Raised by a handler that answers with a non-200 status and a body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body


class _Metrics(Exception):  # noqa: N818 - a response, like _Response
    """The Prometheus exposition, which is not JSON."""

    def __init__(self, body: bytes) -> None:
        self.body = body


def error_body(err: BatonError) -> bytes:
    body: dict[str, Any] = {"error": err.message, "code": err.code}
    if err.details:
        body["details"] = err.details
    try:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # e.g. an offending integer beyond 64 bits, echoed back in 'got'
        return json.dumps(body, default=str).encode()


class BatonApp:
    """The ASGI callable. ``on_ready`` runs once every model has started (or failed)."""

    def __init__(self, engine: Engine, *, max_body_bytes: int,
                 on_ready: Callable[[Engine], None] | None = None,
                 guard: Guard | None = None, metrics_port: int = 0) -> None:
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self.on_ready = on_ready
        self.guard = guard
        #: The port of the metrics-only listener (0: none).
        self.metrics_port = metrics_port
        self._starting: asyncio.Task[None] | None = None
        self.dashboard = Dashboard(engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.metrics_port and (scope.get("server") or ("", 0))[1] == self.metrics_port:
                await self._metrics_only(scope, send)
                return
            if self.guard is not None:
                try:
                    await self.guard.admit(scope)
                except BatonError as err:
                    await _reply(send, err.http_status, error_body(err),
                                 CHALLENGE if err.http_status == 401 else [])
                    return
            if scope["path"] == "/ui" or scope["path"].startswith("/ui/"):
                await self.dashboard(scope, receive, send)  # the web UI: pages, registry proxy
                return
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    # -- lifespan ----------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                # Listen at once (liveness answers); models become ready in the background.
                self._starting = asyncio.get_running_loop().create_task(self._start_models())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._starting is not None and not self._starting.done():
                    self._starting.cancel()
                await self.engine.close()
                if self.guard is not None and self.guard.registry is not None:
                    await self.guard.registry.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_models(self) -> None:
        try:
            await self.engine.start()
        except Exception:  # never silently: the engine would just stay unready
            log.exception("the engine failed to start its models")
            raise
        if self.on_ready is not None:
            self.on_ready(self.engine)

    # -- http --------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = 200, b""
        try:
            body = await self._route(scope, receive)
        except _Response as r:
            status, body = r.status, orjson.dumps(r.body)
        except _Metrics as r:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE.encode()),
                                    (b"content-length", str(len(r.body)).encode())]})
            await send({"type": "http.response.body", "body": r.body})
            return
        except BatonError as err:
            await _reply(send, err.http_status, error_body(err), _allow(err))
            return
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            status = 500
            body = orjson.dumps({"error": "internal error in the engine; see its log",
                                 "code": "INTERNAL_ERROR"})
        if isinstance(body, binary.Framed):  # the V2 binary extension: JSON, then tensors
            await _reply(send, status, body, [(_INFER_HEADER, str(body.json_length).encode())],
                         _BINARY)
            return
        await _reply(send, status, body)

    async def _metrics_only(self, scope: Scope, send: Send) -> None:
        """The metrics port: ``GET /metrics`` and nothing else (no token: for Prometheus)."""
        path = scope["path"].rstrip("/") or "/"
        if path != "/metrics" or self.engine.metrics is None:
            err: BatonError = RouteNotFound("this port serves only GET /metrics")
        elif scope["method"] != "GET":
            err = MethodNotAllowed(f"method {scope['method']} not allowed here; use GET",
                                   details={"allowed": "GET"})
        else:
            body = self.engine.metrics.render()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await _reply(send, err.http_status, error_body(err), _allow(err))

    async def _route(self, scope: Scope, receive: Receive) -> bytes:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            return await self._v2(method, parts[1:], scope, receive)
        if path == "/v1/stats":
            _only(method, "GET")
            stats = self.engine.stats()
            predlog = self.engine.predlog
            stats["prediction_log"] = predlog.describe() if predlog is not None else None
            return orjson.dumps(stats, option=orjson.OPT_SERIALIZE_NUMPY)
        if parts[:2] == ["v1", "models"]:
            if len(parts) == 2:
                _only(method, "GET")
                body: dict[str, Any] = {"models": self.engine.describe()}
                if self.engine.source is not None:
                    body["source"] = self.engine.source.describe()
                if self.engine.streams:
                    body["streams"] = [st.describe() for st in self.engine.streams]
                return orjson.dumps(body)
            if len(parts) == 4 and parts[3] == "feedback":
                _only(method, "POST")
                svc = self.engine.lookup(parts[2])
                return await svc.feedback(await self._body(scope, receive))
            if len(parts) == 4 and parts[3] == "predict":
                _only(method, "POST")
                self.engine.lookup(parts[2])  # 404 before reading the body
                body = await self._body(scope, receive)
                return await self.engine.get(parts[2]).predict_records(body)
        if path == "/metrics":
            _only(method, "GET")
            if self.engine.metrics is None:
                raise RouteNotFound("metrics are off (BATON_METRICS=false)")
            raise _Metrics(self.engine.metrics.render())
        if path == "/openapi.json":
            _only(method, "GET")
            return orjson.dumps(openapi_document(self.engine, auth=self.guard is not None))
        raise RouteNotFound(f"no route {method} {path}; see /openapi.json")

    async def _v2(self, method: str, parts: list[str], scope: Scope, receive: Receive) -> bytes:
        if not parts:
            _only(method, "GET")
            return orjson.dumps({"name": "baton", "version": __version__,
                                 "extensions": ["binary_tensor_data"]})
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            _only(method, "GET")
            if parts[1] == "live":
                return orjson.dumps({"live": True})
            ready = self.engine.ready
            if not ready:
                raise _Response(503, {"ready": False})
            return orjson.dumps({"ready": True})
        if parts[0] != "models" or len(parts) < 2:
            raise RouteNotFound(f"no route {method} /v2/{'/'.join(parts)}")
        name, rest, version = parts[1], parts[2:], None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        svc = self.engine.lookup(name, version)
        if not rest:
            _only(method, "GET")
            return orjson.dumps(svc.metadata(), option=orjson.OPT_SERIALIZE_NUMPY)
        if rest == ["ready"]:
            _only(method, "GET")
            if not svc.ready:
                raise _Response(503, {"name": name, "ready": False})
            return orjson.dumps({"name": name, "ready": True})
        if rest == ["infer"]:
            _only(method, "POST")
            body = await self._body(scope, receive)
            for key, value in scope["headers"]:
                if key == _INFER_HEADER:
                    body = binary.Framed(body, binary.header_length(value, len(body)))
                    break
            return await self.engine.get(name, version).infer(body)
        raise RouteNotFound(f"no route {method} /v2/{'/'.join(parts)}")

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
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
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return _decoded(encoding, body, limit) if encoding else body


async def _reply(send: Send, status: int, body: bytes,
                 extra: list[tuple[bytes, bytes]] | None = None,
                 content_type: list[tuple[bytes, bytes]] = _JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*content_type, (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


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


def _allow(err: BatonError) -> list[tuple[bytes, bytes]]:
    """A 405 names the methods the route takes, in ``Allow`` as HTTP requires."""
    if isinstance(err, MethodNotAllowed) and err.details:
        return [(b"allow", str(err.details["allowed"]).encode())]
    return []


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here; use {allowed}",
                               details={"allowed": allowed})
