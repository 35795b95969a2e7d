"""The cluster's HTTP front: Ray Serve's proxies hand every request to an ingress replica,
which authenticates it and forwards it whole to a replica of the model it names.

Model routes (``/v2/models/NAME/...``, ``/v1/models/NAME/...``) and ``/v2`` are answered by a
model replica's own engine, so they are byte for byte what one machine answers. The ingress
answers what concerns the whole cluster: liveness, readiness (every model has a replica that
serves), the list of models, ``/v1/cluster`` (every replica, its node and its state),
``/v1/stats`` (each replica's own figures, from the board: :mod:`baton.cluster.board`),
``/metrics`` (every replica's, labelled with its replica and node:
:mod:`baton.cluster.exposition`) and the dashboard at ``/ui``, which reads those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from baton.cluster.exposition import PLACE, merge
from baton.cluster.replica import call_asgi
from baton.dashboard import Dashboard
from baton.dashboard.proxy import Followed
from baton.errors import BatonError, ModelNotFound, PayloadTooLarge, RouteNotFound
from baton.monitor.metrics import CONTENT_TYPE
from baton.server.app import error_reply
from baton.server.auth import CHALLENGE, Guard
from baton.server.routes import Reply

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from baton.cluster.serve import IngressAuth

log = logging.getLogger("baton.cluster")

#: Seconds the ingress waits for a model's replica to say it is ready.
READY_TIMEOUT = 5.0
#: Paths one machine serves but a cluster answers elsewhere (said in the 404).
ELSEWHERE = {"/openapi.json": "the routes are one machine's (docs/http.md); ask an engine "
                              "serving the same bundles there"}


class Ingress:
    """The ingress deployment's class: ``models`` maps each model's name to the handle of
    its deployment."""

    def __init__(self, models: dict[str, Any], auth: IngressAuth, max_body_bytes: int,
                 app_name: str) -> None:
        self.models = models
        self.guard = None
        self.followed = (Followed(auth.registry[0], auth.stage, auth.registry[1])
                         if auth.registry is not None else None)
        self.dashboard = Dashboard(lambda: self.followed)
        if auth.on:
            registry = None
            if auth.registry is not None:
                from baton.server.registry_tokens import RegistryTokens

                registry = RegistryTokens(*auth.registry)
            self.guard = Guard(auth.tokens.load() if auth.tokens else None, registry)
        self.max_body_bytes = max_body_bytes
        self.app_name = app_name

    async def __call__(self, request: Request) -> Response:
        from starlette.responses import Response

        try:
            reply = await self._answer(request)
        except BatonError as err:
            reply = error_reply(err, CHALLENGE if err.http_status == 401 else ())
        except Exception:
            log.exception("ingress: %s %s", request.method, request.url.path)
            reply = Reply(500, b'{"error":"internal error","code":"INTERNAL"}')
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
        return Response(reply.body, reply.status, headers,
                        media_type=reply.content_type.decode())

    async def _answer(self, request: Request) -> Reply:
        scope = request.scope
        if self.guard is not None:
            await self.guard.admit(dict(scope))
        path = scope["path"].rstrip("/") or "/"
        parts = path.split("/")
        if path == "/v2/health/live":
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            return await self._ready()
        if path == "/v1/cluster":
            return _json(200, await self.describe())
        if path == "/v1/stats":
            return _json(200, await self.stats())
        if path == "/metrics":
            return await self.metrics()
        if path in ("/v1/models", "/v2/models"):
            listed: dict[str, Any] = {"models": await self._list()}
            if self.followed is not None:
                listed["source"] = {"url": self.followed.url, "stage": self.followed.stage}
            return _json(200, listed)
        if path == "/ui" or path.startswith("/ui/"):
            return await self._dashboard(request)
        if len(parts) >= 4 and parts[1] in ("v1", "v2") and parts[2] == "models":
            handle = self.models.get(parts[3])
            if handle is None:
                raise ModelNotFound(f"no model named {parts[3]!r} is served here "
                                    f"(serving: {', '.join(sorted(self.models))})")
            return await self._forward(handle, request, path)
        if path == "/v2" and self.models:
            return await self._forward(next(iter(self.models.values())), request, path)
        where = ELSEWHERE.get(path)
        raise RouteNotFound(f"no route {request.method} {path} on a cluster"
                            + (f": {where}" if where else ""))

    async def _forward(self, handle: Any, request: Request, path: str) -> Reply:
        body = await _read(request, self.max_body_bytes)
        scope = request.scope
        status, headers, out = await handle.handle.remote(
            (scope["method"], path, scope.get("query_string", b""),
             list(scope["headers"]), body))
        return _reply(status, headers, out)

    async def _dashboard(self, request: Request) -> Reply:
        """The pages and assets, and the registry proxy (as one machine serves them)."""
        scope = request.scope
        body = await _read(request, self.max_body_bytes) if scope["method"] == "POST" else b""
        status, headers, out = await call_asgi(self.dashboard, (
            scope["method"], scope["path"], scope.get("query_string", b""),
            list(scope["headers"]), body))
        return _reply(status, headers, out)

    async def _ready(self) -> Reply:
        async def one(name: str, handle: Any) -> tuple[str, bool]:
            try:
                return name, bool(await asyncio.wait_for(handle.ready.remote(),
                                                         READY_TIMEOUT))
            except Exception:  # no replica answered in time: not ready, whatever the cause
                return name, False
        answers = await asyncio.gather(*(one(n, h) for n, h in self.models.items()))
        waiting = sorted(n for n, ok in answers if not ok)
        if waiting:
            return _json(503, {"ready": False, "error": f"no ready replica of "
                               f"{', '.join(waiting)}", "code": "NOT_READY",
                               "models": waiting})
        return _json(200, {"ready": True})

    async def _list(self) -> list[dict[str, Any]]:
        async def one(handle: Any) -> dict[str, Any]:
            item: dict[str, Any] = await handle.describe.remote()
            return {k: item[k] for k in ("model", "version", "digest", "ready")}
        return list(await asyncio.gather(*(one(h) for h in self.models.values())))

    async def _deployments(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """This application in Ray Serve's controller's view, and each replica's last post
        to the board, by replica id."""
        details, posts = await asyncio.gather(asyncio.to_thread(_serve_details),
                                              self._posts())
        return details.get("applications", {}).get(self.app_name, {}), posts

    async def describe(self) -> dict[str, Any]:
        """Every replica of this application, by deployment, with its node; a model
        replica's version, readiness and workers as it last posted them."""
        app, posts = await self._deployments()
        deployments = {}
        for name, dep in app.get("deployments", {}).items():
            replicas = []
            for r in dep.get("replicas", []):
                post = posts.get(str(r.get("replica_id")), {})
                row: dict[str, Any] = {**_placed(r), "state": r.get("state"),
                                       "pid": r.get("pid"), "since": r.get("start_time_s"),
                                       **{k: post[k] for k in ("version", "ready",
                                                                "workers") if k in post}}
                replicas.append(row)
            deployments[name] = {"status": dep.get("status"), "message": dep.get("message"),
                                 "replicas": replicas}
        nodes = sorted({r["node"] for d in deployments.values() for r in d["replicas"]
                        if r["node"]})
        return {"application": self.app_name, "status": app.get("status"),
                "models": sorted(self.models), "deployments": deployments, "nodes": nodes,
                "at": time.time()}

    async def stats(self) -> dict[str, Any]:
        """``/v1/stats`` of the cluster: each running model replica's own entry, with its
        replica id and node (``baton status`` shows a row each)."""
        models = [{**entry, **place} for place, post in await self._running()
                  for entry in post["stats"]["models"]]
        return {"time": time.time(), "models": models, "streams": [],
                "prediction_log": None, "cluster": True}

    async def metrics(self) -> Reply:
        """``/metrics`` of the cluster: each running model replica's exposition, its samples
        labelled with its replica and node."""
        given = [({label: str(place[label]) for label in PLACE}, post.get("exposition", ""))
                 for place, post in await self._running()]
        return Reply(200, await asyncio.to_thread(merge, given), CONTENT_TYPE.encode())

    async def _running(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each running model replica's place (:func:`_placed`) and its last post."""
        app, posts = await self._deployments()
        return [(_placed(r), posts[str(r.get("replica_id"))])
                for dep in app.get("deployments", {}).values()
                for r in dep.get("replicas", [])
                if r.get("state") == "RUNNING" and str(r.get("replica_id")) in posts]

    async def _posts(self) -> dict[str, dict[str, Any]]:
        from baton.cluster.board import board

        try:
            posts: dict[str, dict[str, Any]] = await board().all.remote()
        except Exception:  # no board (the driver starts it): nothing posted
            return {}
        return posts


def _placed(replica: dict[str, Any]) -> dict[str, Any]:
    """A replica's id and where it runs, as the controller reports them."""
    return {"replica": replica.get("replica_id"), "node": replica.get("node_id"),
            "node_ip": replica.get("node_ip")}


def _serve_details() -> dict[str, Any]:
    """Ray Serve's controller's view of every application, deployment and replica."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise BatonError("Ray Serve's controller is not reachable", code="CLUSTER_UNREACHABLE")
    details: dict[str, Any] = client.get_serve_details()
    return details


async def _read(request: Request, limit: int) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        raise PayloadTooLarge(f"the body is {size} bytes; at most {limit} are accepted",
                              details={"limit": limit})
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes",
                                  details={"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
    """An ASGI answer as a Reply (its content type apart; its length set again)."""
    ctype = next((v for k, v in headers if k == b"content-type"), b"application/json")
    rest = tuple((k, v) for k, v in headers if k not in (b"content-type", b"content-length"))
    return Reply(status, body, ctype, rest)


def _json(status: int, body: dict[str, Any]) -> Reply:
    return Reply(status, orjson.dumps(body))
