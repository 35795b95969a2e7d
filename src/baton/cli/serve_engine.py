"""The engine behind ``baton serve``: built, announced and run under uvicorn.

:mod:`baton.cli.serve` checks the options, binds the ports and starts each local model's
worker template first, with light imports only; this module, which imports the engine,
the HTTP stack and the monitoring, comes after, while the templates import the models'
libraries on the other cores.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import click
import uvicorn

from baton import tracing
from baton.cli.serve import Listening
from baton.deployment import EngineSpec
from baton.errors import BatonError
from baton.server.app import BatonApp
from baton.server.auth import Guard
from baton.server.tls_shutdown import HttpProtocol
from baton.server.tokens import TokenFile
from baton.serving.assembly import build_engine
from baton.serving.opening import Opened
from baton.serving.service import Engine, ModelService
from baton.settings import Settings

if TYPE_CHECKING:
    from baton.registry.client import RegistryClient
    from baton.server.grpc_server import GrpcEndpoint

log = logging.getLogger("baton.serve")
_AUTH_HEADER = '-H "authorization: Bearer $BATON_TOKEN" '


def _example_request(svc: ModelService, base: str, auth: bool = False) -> str:
    header = _AUTH_HEADER if auth else ""
    s = svc.bundle.manifest.samples
    if svc.contract.kind != "records" or s is None:
        return f"curl {header}{base}/v2/models/{svc.name}"
    try:
        first = json.loads((svc.bundle.path / s.input).read_text())[:1]
    except (OSError, ValueError):
        return f"curl {header}{base}/v2/models/{svc.name}"
    body = json.dumps(first).replace("'", "'\\''")
    return (f"curl -s -X POST {base}/v1/models/{svc.name}/predict {header}"
            f"-H 'content-type: application/json' -d '{body}'")


def serve_engine(opts: EngineSpec, settings: Settings, opened: Mapping[str, Opened],
                 listening: Listening) -> None:
    """Build the engine (with the bundles ``opened`` ahead), serve it until a signal."""
    sock, msock, grpc_port, tls = (listening.sock, listening.msock, listening.grpc_port,
                                   listening.tls)
    started, port = listening.started, sock.getsockname()[1]
    engine = build_engine(opts, settings, opened)
    for svc in engine.versions.services():  # the models' imports overlap the rest of ours
        svc.pool.template.prewarm()
    if engine.predlog is not None:
        engine.predlog.open()  # a store it cannot reach stops serve here, not later
    guard = _guard(listening.tokens, engine, settings) if listening.auth else None
    grpc = None
    if grpc_port:
        from baton.server.grpc_server import GrpcEndpoint  # importable: _grpc_port checked

        grpc = GrpcEndpoint(engine, guard, settings, grpc_port)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    scheme = "https" if tls else "http"
    base = f"{scheme}://{host}:{port}"

    def announce(engine: Engine) -> None:
        # Everything imported and started is there for good: keep it out of the cyclic
        # collector's full passes, which otherwise walk it again and again while records
        # are scored (bench/streams: Kafka 0.79-0.97x the floor without, 0.89-1.06x with).
        gc.freeze()
        lines = [f"Baton is serving at {base} ({time.perf_counter() - started:.2f}s)"]
        for svc in engine.models.values():
            state = "ready" if svc.ready else "NOT READY (see /v2/models/" + svc.name + ")"
            lines.append(f"  {svc.name} {svc.version}: {state}")
        lines.append(f"  OpenAPI: {base}/openapi.json")
        if guard is not None:
            lines.append(f"  Authentication: tokens from the {guard.describe()}")
        if msock is not None:
            lines.append(f"  Metrics for Prometheus (no token): {scheme}://{host}:"
                         f"{msock.getsockname()[1]}/metrics")
        if grpc is not None:
            lines.append(f"  gRPC (Open Inference Protocol): {host}:{grpc_port}"
                         + (" (TLS)" if tls else ""))
        ready = [s for s in engine.models.values() if s.ready]
        if ready:
            lines.append("Try:")
            lines.append("  " + _example_request(ready[0], base, listening.auth))
        if settings.log_format == "json":  # a log pipeline reads only JSON lines
            log.info("\n".join(lines))
        else:
            click.echo("\n".join(lines), err=True)

    app = BatonApp(engine, max_body_bytes=settings.max_body_bytes, on_ready=announce,
                   guard=guard, metrics_port=msock.getsockname()[1] if msock else 0,
                   access_log=settings.access_log)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop",
                            http=HttpProtocol, lifespan="on", access_log=False,
                            log_config=None,  # uvicorn's lines go through baton.logs
                            log_level=settings.log_level, timeout_graceful_shutdown=int(
                                settings.drain_timeout), **tls)
    # uvicorn drains, then re-raises the signal it caught; a drained shutdown exits 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per registry poll
    server = EngineServer(config, grpc)
    try:
        # Both listeners belong to one server (one loop, one TLS setting); the app tells
        # them apart by the port a request arrived on.
        server.run(sockets=[sock, *([msock] if msock else [])])
    except SystemExit:
        if server.started:
            raise
    finally:
        tracing.shutdown()  # the spans still buffered are exported before the exit
    if not server.started:
        raise BatonError(f"the HTTP server could not start on {base} (see the log above: "
                         "is the port in use?)", code="SERVER_START_FAILED")


class EngineServer(uvicorn.Server):
    """uvicorn's server, with the gRPC endpoint (when there is one) on the same event loop:
    bound before the models start, and stopped, its calls drained, before they close."""

    def __init__(self, config: uvicorn.Config, grpc: GrpcEndpoint | None) -> None:
        super().__init__(config)
        self.grpc = grpc

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is None:
            await super().startup(sockets)
            return
        await self.grpc.start()
        try:
            await super().startup(sockets)
        finally:
            if not self.started:  # HTTP could not start: neither does gRPC
                await self.grpc.stop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await super().shutdown(sockets)


def _guard(tokens: TokenFile | None, engine: Engine, settings: Settings) -> Guard:
    """The token sources: the file, then (when it serves from one) the registry, reached
    with the same URL and TLS options as the engine's own registry client."""
    registry = None
    client = _registry_client(engine)
    if client is not None:
        from baton.server.registry_tokens import RegistryTokens

        registry = RegistryTokens(client.url, client.tls, settings.auth_cache_seconds)
    guard = Guard(tokens, registry)
    log.info("authentication on: tokens from the %s", guard.describe())
    return guard


def _registry_client(engine: Engine) -> RegistryClient | None:
    from baton.registry.client import RegistryClient
    from baton.serving.follow import RegistryFollower

    source = engine.source
    if isinstance(source, RegistryFollower) and isinstance(source.client, RegistryClient):
        return source.client
    return None


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
