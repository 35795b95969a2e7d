"""One replica of one model on a Ray cluster: a one-model Baton engine with its own workers.

The replica is a Ray Serve deployment's class. It receives the bundle as a verified
archive's bytes (a :class:`Shipment`), writes it under the node's Baton home, opens it
against its digest, builds or reuses its uv environment on that node, starts its workers
and scores the bundle's samples before Ray sends it a request: a replica that cannot serve
never joins (Ray retries it and ``baton status`` shows why). Requests reach it from the
ingress (:mod:`baton.cluster.ingress`) as whole HTTP requests and are answered by the same
ASGI app as on one machine, so contracts, batching, errors and the V2 and records APIs are
the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from baton.deployment import DeploymentSpec, EngineSpec
from baton.errors import BatonError
from baton.settings import Settings

if TYPE_CHECKING:
    from baton.bundle.loader import Bundle

log = logging.getLogger("baton.cluster")

#: One HTTP request as the ingress forwards it: method, path, query string, headers, body.
Forwarded = tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]
#: The answer: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass(frozen=True)
class Shipment:
    """A bundle on its way to the replicas: its archive's bytes and the digest they must
    have (the driver verified them, the replica verifies them again)."""

    name: str
    version: str
    digest: str
    archive: bytes


class ModelReplica:
    """A Ray Serve replica serving one model (see the module's docstring)."""

    async def __init__(self, shipment: Shipment, settings: Settings,  # type: ignore[misc]
                       workers: int | None = None) -> None:  # Ray Serve awaits it
        from baton.server.app import BatonApp
        from baton.serving.assembly import build_engine

        started = time.perf_counter()
        self.shipment = shipment
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        bundle = await asyncio.to_thread(unpack, shipment, settings)
        # The verified archive's extracted folder: the engine opens it in place.
        spec = EngineSpec((DeploymentSpec(str(bundle.path), workers=workers),))
        own = replace(settings, metrics=True)
        self.engine = await asyncio.to_thread(build_engine, spec, own)
        await self.engine.start()
        svc = self.engine.models.get(shipment.name)
        if svc is None or not svc.ready:
            await self.engine.close()
            raise BatonError(f"{shipment.name}@{shipment.version} did not start on this "
                             f"replica (see its log)", code="REPLICA_NOT_READY")
        await svc.warm_up()
        self.app = BatonApp(self.engine, max_body_bytes=settings.max_body_bytes)
        self.started_at = time.time()
        from ray import serve

        from baton.cluster.board import post_forever

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._posting = asyncio.get_running_loop().create_task(
            post_forever(self.replica_id, self.post))
        log.info("%s@%s ready on node %s in %.2fs", shipment.name, shipment.version,
                 _node_id()[:12], time.perf_counter() - started)

    async def handle(self, request: Forwarded) -> Answer:
        """Answer one forwarded HTTP request through the engine's own ASGI app."""
        return await call_asgi(self.app, request)

    def describe(self) -> dict[str, Any]:
        """This replica: where it runs, what it serves and its workers (``/v1/models``,
        ``/v1/cluster``)."""
        svc = self.engine.models.get(self.shipment.name)
        return {"replica": self.replica_id,
                "node": _node_id(), "pid": os.getpid(), "model": self.shipment.name,
                "version": self.shipment.version, "digest": self.shipment.digest,
                "ready": bool(svc and svc.ready), "since": self.started_at,
                "workers": [w.pid for w in svc.pool.workers if w] if svc else []}

    def post(self) -> dict[str, Any]:
        """What the replica posts to the board every second: :meth:`describe`, its engine's
        figures (``/v1/stats``, ``baton status``) and its Prometheus exposition
        (``/metrics``), rendered only here, never for a request."""
        exposition = self.engine.metrics.render().decode() if self.engine.metrics else ""
        return {**self.describe(), "stats": self.engine.stats(), "exposition": exposition}

    def ready(self) -> bool:
        svc = self.engine.models.get(self.shipment.name)
        return bool(svc and svc.ready)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose model stopped serving is replaced (a
        crashed worker is restarted by the pool first, as on one machine)."""
        if not self.ready():
            raise BatonError(f"{self.shipment.name} is not ready on this replica",
                             code="REPLICA_NOT_READY")

    async def __del__(self) -> None:
        """Ray Serve stops a replica gracefully: requests it holds finish, workers stop."""
        posting = getattr(self, "_posting", None)
        if posting is not None:
            posting.cancel()
        engine = getattr(self, "engine", None)
        if engine is not None:
            await engine.close()


async def call_asgi(app: Any, request: Forwarded) -> Answer:
    """One whole HTTP request through an ASGI app, in process; its whole answer."""
    method, path, query, headers, body = request
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query, "headers": headers, "scheme": "http",
             "server": ("127.0.0.1", 0), "client": ("127.0.0.1", 0), "root_path": ""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # no disconnect: the caller holds the connection
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status, out_headers, chunks = 500, [], []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out_headers
        if message["type"] == "http.response.start":
            status, out_headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)


def unpack(shipment: Shipment, settings: Settings) -> Bundle:
    """The shipped bundle on this node: its archive kept under the node's Baton home
    (written once per digest), verified against the shipment's digest and opened."""
    from baton.serving.opening import open_local

    folder = settings.home / "cluster"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shipment.name}-{shipment.digest.split(':')[-1][:32]}.baton"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_bytes(shipment.archive)
        tmp.replace(path)
    return open_local(path, settings, expected_digest=shipment.digest)


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())
