"""HTTP only: a raw ASGI application over the engine (no framework on the hot path).

Routes follow the Open Inference Protocol V2 REST API, plus a records endpoint and an
OpenAPI document; :data:`~baton.server.handlers.ENGINE_ROUTES` lists them. Every error is
JSON: ``{"error": message, "code": CODE, "details": ...}`` (``error`` stays a string so
existing V2 clients can read it). A path no route answers is 404; a route asked with
another method is 405 with ``Allow`` naming the route's methods.

Every answer carries the request's id in ``X-Request-Id`` (the caller's, when it sent a sane
one, else a new one), and every line logged while the request is handled carries it too
(:mod:`baton.logs`); with ``access_log``, each request is one line: method, path, status,
duration, model, version, digest, and the failing stage of an error.

With a :class:`~baton.server.auth.Guard`, every request is admitted (or answered 401, 403
or 503) before it is routed. A metrics port, when given, is another listener of the same
server on which only ``GET /metrics`` answers, without a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from baton import tracing as _tracing
from baton.dashboard import Dashboard
from baton.dashboard.proxy import followed_by
from baton.errors import BatonError, MethodNotAllowed, RouteNotFound
from baton.logs import REQUEST_ID, request_id
from baton.monitor.errors import error_stage
from baton.monitor.metrics import CONTENT_TYPE
from baton.server.auth import CHALLENGE, Guard
from baton.server.body import Receive, Scope, Send
from baton.server.handlers import ENGINE_ROUTES
from baton.server.routes import Header, Match, Reply, Request, Route, RouteTable
from baton.serving.service import Engine

log = logging.getLogger("baton.server")
access = logging.getLogger("baton.access")
_REQUEST_ID = b"x-request-id"

_INTERNAL = orjson.dumps({"error": "internal error in the engine; see its log",
                          "code": "INTERNAL_ERROR"})


def error_body(err: BatonError) -> bytes:
    body: dict[str, Any] = {"error": err.message, "code": err.code}
    if err.details:
        body["details"] = err.details
    try:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # e.g. an offending integer beyond 64 bits, echoed back in 'got'
        return json.dumps(body, default=str).encode()


def error_reply(err: BatonError, headers: tuple[Header, ...] = ()) -> Reply:
    return Reply(err.http_status, error_body(err), headers=headers)


def not_allowed(method: str, route: Route) -> Reply:
    """The 405 of a route asked with a method it does not take."""
    err = MethodNotAllowed(f"method {method} not allowed here; use {route.allow}",
                           details={"allowed": route.allow})
    return error_reply(err, ((b"allow", route.allow.encode()),))


def not_found(method: str, path: str) -> Reply:
    # V2 clients get the protocol's plain message; the rest a pointer to the document.
    hint = "" if path == "/v2" or path.startswith("/v2/") else "; see /openapi.json"
    return error_reply(RouteNotFound(f"no route {method} {path}{hint}"))


class BatonApp:
    """The ASGI callable. ``on_ready`` runs once every model has started (or failed)."""

    def __init__(self, engine: Engine, *, max_body_bytes: int,
                 on_ready: Callable[[Engine], None] | None = None,
                 guard: Guard | None = None, metrics_port: int = 0,
                 routes: RouteTable = ENGINE_ROUTES, access_log: bool = False) -> None:
        self.engine = engine
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.on_ready = on_ready
        self.guard = guard
        #: The port of the metrics-only listener (0: none).
        self.metrics_port = metrics_port
        #: One log line per request (``baton.access``, INFO).
        self.access_log = access_log
        self._starting: asyncio.Task[None] | None = None
        self.dashboard = Dashboard(lambda: followed_by(engine))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.metrics_port and (scope.get("server") or ("", 0))[1] == self.metrics_port:
                await self._metrics_only(scope, send)
                return
            rid = request_id(next((v for k, v in scope["headers"] if k == _REQUEST_ID), None))
            token = REQUEST_ID.set(rid)
            try:
                if self.guard is not None:
                    try:
                        await self.guard.admit(scope)
                    except BatonError as err:
                        await _send(send, error_reply(
                            err, CHALLENGE if err.http_status == 401 else ()), rid)
                        return
                if scope["path"] == "/ui" or scope["path"].startswith("/ui/"):
                    await self.dashboard(scope, receive, send)  # the web UI and its proxy
                    return
                await self._http(scope, receive, send, rid)
            finally:
                REQUEST_ID.reset(token)
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
    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        start = time.perf_counter()
        match = self.routes.resolve(scope["path"].rstrip("/") or "/")  # once per request
        trace = self._trace(scope, rid, match) if _tracing.ACTIVE is not None else None
        failed: BatonError | None = None
        try:
            reply = await self._route(scope, receive, match)
        except BatonError as err:
            reply, failed = error_reply(err), err
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            reply = Reply(500, _INTERNAL)
        await _send(send, reply, rid)
        if trace is not None:
            trace.end(reply.status, failed)
        if self.access_log:
            self._access(scope, match, reply.status, time.perf_counter() - start, failed)

    def _trace(self, scope: Scope, rid: str, match: Match | None) -> _tracing.Trace | None:
        """The server span of a request to a model's route, when it is sampled."""
        assert _tracing.ACTIVE is not None
        parent = _tracing.ACTIVE.parent(scope["headers"])
        if parent is None:
            return None
        if match is None or match.route is None or match.family is None:
            return None
        route = (f"{match.family.prefix}/{{name}}"
                 f"{'/versions/{version}' if match.version is not None else ''}"
                 f"{'/' + match.route.path if match.route.path else ''}")
        return _tracing.ACTIVE.start(parent, scope, route, rid)

    def _access(self, scope: Scope, match: Match | None, status: int, seconds: float,
                failed: BatonError | None) -> None:
        """The request's line: what an operator's log pipeline indexes."""
        extra: dict[str, object] = {"method": scope["method"], "path": scope["path"],
                                    "status": status, "duration_ms": round(seconds * 1e3, 3)}
        if match is not None and match.name:
            svc = self.engine.models.get(match.name)
            extra["model"] = match.name
            if svc is not None:
                extra.update(version=svc.version, digest=svc.bundle.digest)
        if failed is not None:
            extra["stage"] = error_stage(failed)
        access.info("%s %s %d %.1fms", scope["method"], scope["path"], status,
                    seconds * 1e3, extra=extra)

    async def _route(self, scope: Scope, receive: Receive, match: Match | None) -> Reply:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if match is None:
            return not_found(method, path)
        if match.family is not None and match.family.model_first:
            self.engine.lookup(match.name, match.version)  # an unknown model is 404 first
        route = match.route
        if route is None:
            return not_found(method, path)
        if method not in route.methods:
            return not_allowed(method, route)
        return await route.handler(Request(self.engine, scope, receive, self.max_body_bytes,
                                           self.guard is not None, match.name, match.version))

    async def _metrics_only(self, scope: Scope, send: Send) -> None:
        """The metrics port: ``GET /metrics`` and nothing else (no token: for Prometheus)."""
        path = scope["path"].rstrip("/") or "/"
        route = self.routes.static["/metrics"]
        if path != "/metrics" or self.engine.metrics is None:
            reply = error_reply(RouteNotFound("this port serves only GET /metrics"))
        elif scope["method"] not in route.methods:
            reply = not_allowed(scope["method"], route)
        else:
            reply = Reply(200, self.engine.metrics.render(), CONTENT_TYPE.encode())
        await _send(send, reply)


async def _send(send: Send, reply: Reply, rid: str = "") -> None:
    headers = [(b"content-type", reply.content_type),
               (b"content-length", str(len(reply.body)).encode()), *reply.headers]
    if rid:
        headers.append((_REQUEST_ID, rid.encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
