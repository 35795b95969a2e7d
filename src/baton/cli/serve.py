"""``baton serve``: open bundles, build their environments, run the HTTP engine.

Authentication is on whenever a token file is given or the engine follows a registry;
an engine with neither that listens beyond loopback says so, loudly, at start.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import uvicorn

from baton import tracing
from baton.deployment import (
    DeploymentSpec,
    EngineSpec,
    LabelsSpec,
    RegistrySpec,
    ShadowSpec,
    StreamSpec,
    load_deployments,
    parse_canary,
)
from baton.errors import BatonError, SettingsError
from baton.logs import configure as configure_logs
from baton.server.auth import Guard
from baton.server.tls import HttpProtocol, tls_options
from baton.server.tokens import TokenFile
from baton.serving.assembly import build_engine
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


def engine_spec(bundles: tuple[str, ...], registry: str | None, stage: str, poll: float,
                canary: str | None, shadow: str | None, input_url: str | None,
                output_url: str | None, dead_letter: str | None, group: str | None,
                max_batch: int, deployment: Path | None, labels: str | None) -> EngineSpec:
    """``baton serve``'s options as the engine spec the library builds from."""
    deployments = [DeploymentSpec(ref) for ref in bundles]
    if deployment is not None:
        deployments += load_deployments(deployment)
    stream = None
    if input_url or output_url or (dead_letter and not labels):
        stream = _stream_option(input_url, output_url, dead_letter, group, max_batch)
    return EngineSpec(
        tuple(deployments), RegistrySpec(registry, stage, poll) if registry else None,
        parse_canary(canary) if canary else None, ShadowSpec(shadow) if shadow else None,
        stream, _labels_option(labels, dead_letter, group, max_batch) if labels else None)


def _stream_option(input_url: str | None, output_url: str | None, dead_letter: str | None,
                   group: str | None, max_batch: int) -> StreamSpec:
    missing = [n for n, v in (("--input", input_url), ("--output", output_url),
                              ("--dead-letter", dead_letter)) if not v]
    if not input_url or not output_url or not dead_letter:
        raise SettingsError(f"a stream binding needs --input, --output and --dead-letter; "
                            f"missing {', '.join(missing)}")
    return StreamSpec(input_url, output_url, dead_letter, group or "", max_batch)


def _labels_option(labels: str, dead_letter: str | None, group: str | None,
                   max_batch: int) -> LabelsSpec:
    if not dead_letter:
        raise SettingsError("a labels binding needs --dead-letter (where labels that cannot "
                            "be attached go); missing --dead-letter")
    return LabelsSpec(labels, dead_letter, f"{group}-labels" if group else "", max_batch)


def run_server(opts: EngineSpec, settings: Settings) -> None:
    from baton.server.app import BatonApp

    configure_logs(settings.log_level, settings.log_format)
    tracing.configure(settings)  # tracing asked for without OpenTelemetry: exit 2, here
    started = time.perf_counter()
    # A bad token file or certificate stops serve before anything else (exit 2).
    tokens = TokenFile(settings.tokens_file).load() if settings.tokens_file else None
    tls = tls_options(settings)
    # Listen first: a port in use is a clear error before any environment is built, and
    # --port 0 gets a free port whose number is printed.
    sock = _listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    msock = _listen(settings.host, settings.metrics_port) if settings.metrics_port else None
    grpc_port = _grpc_port(settings, port, msock) if settings.grpc_port else 0
    auth = tokens is not None or opts.registry is not None
    if not auth and _exposed(sock):
        _warn_open(settings.host, port)
    engine = build_engine(opts, settings)
    for svc in engine.versions.services():  # the models' imports overlap the rest of ours
        svc.pool.template.prewarm()
    if engine.predlog is not None:
        engine.predlog.open()  # a store it cannot reach stops serve here, not later
    guard = _guard(tokens, engine, settings) if auth else None
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
            lines.append("  " + _example_request(ready[0], base, auth))
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


def _grpc_port(settings: Settings, port: int, msock: socket.socket | None) -> int:
    """The gRPC port, checked at start as the HTTP one is: grpcio and a recent enough
    protobuf installed, the port free (the gRPC server binds it when the HTTP one starts)."""
    if settings.grpc_port in (port, msock.getsockname()[1] if msock else 0):
        raise SettingsError(f"--grpc-port {settings.grpc_port} is also the HTTP or the "
                            "metrics port: give gRPC a port of its own",
                            details={"field": "grpc_port"})
    # The engine forks its workers only to exec them: gRPC's fork handlers have nothing to
    # do there, and log a line at each fork while its threads are busy. Set before it loads.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import baton.server.grpc_server  # noqa: F401
    except ImportError as exc:
        missing = f"{exc.name} is not installed"
    except Exception as exc:  # protobuf's VersionError: older than the generated code
        if type(exc).__name__ != "VersionError":
            raise
        missing = str(exc).split(". ")[0]
    else:
        probe = _listen(settings.host, settings.grpc_port)
        try:
            probe.listen()  # bound is not enough: another bound socket may share the port
        except OSError as exc:
            raise BatonError(f"cannot listen on {settings.host}:{settings.grpc_port}: "
                             f"{exc.strerror or exc}", code="SERVER_START_FAILED") from None
        finally:
            probe.close()
        return settings.grpc_port
    raise SettingsError(f"--grpc-port needs grpcio and protobuf ({missing}): pip install "
                        "'baton[grpc]'", code="GRPC_MISSING", details={"field": "grpc_port"})


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


def _exposed(sock: socket.socket) -> bool:
    """Whether the socket listens beyond this machine (anything but a loopback address)."""
    address = str(sock.getsockname()[0]).split("%")[0]
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True


def _warn_open(host: str, port: int) -> None:
    bar = "!" * 78
    click.secho("\n".join([
        bar,
        f"!! WARNING: this engine listens on {host}:{port} WITHOUT AUTHENTICATION.",
        "!! Anyone who can reach this port can predict, post feedback (and so skew the",
        "!! accuracy figures) and read /metrics, /v1/stats and the dashboard.",
        "!! Give it tokens (--tokens FILE; see 'baton engine-tokens add'), serve from a",
        "!! registry (--registry URL), or bind it to 127.0.0.1.",
        bar]), fg="red", bold=True, err=True)
    log.warning("listening on %s:%d without authentication: anyone who reaches the port "
                "can predict, post feedback and read metrics", host, port)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: a free one), for uvicorn to serve on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise BatonError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         code="SERVER_START_FAILED",
                         details={"host": host, "port": port}) from None
    return sock


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
