"""``baton serve``: open bundles, build their environments, run the HTTP engine."""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import time

import click

from baton.errors import BatonError
from baton.serving.assembly import EngineSpec, build_engine
from baton.serving.service import Engine, ModelService
from baton.settings import Settings


def _example_request(svc: ModelService, base: str) -> str:
    s = svc.bundle.manifest.samples
    if svc.contract.kind != "records" or s is None:
        return f"curl {base}/v2/models/{svc.name}"
    try:
        first = json.loads((svc.bundle.path / s.input).read_text())[:1]
    except (OSError, ValueError):
        return f"curl {base}/v2/models/{svc.name}"
    body = json.dumps(first).replace("'", "'\\''")
    return (f"curl -s -X POST {base}/v1/models/{svc.name}/predict "
            f"-H 'content-type: application/json' -d '{body}'")


def run_server(opts: EngineSpec, settings: Settings) -> None:
    import uvicorn

    from baton.server.app import BatonApp

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    # Listen first: a port in use is a clear error before any environment is built, and
    # --port 0 gets a free port whose number is printed.
    sock = _listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    engine = build_engine(opts, settings)
    if engine.predlog is not None:
        engine.predlog.open()  # a store it cannot reach stops serve here, not later
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{port}"

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
        ready = [s for s in engine.models.values() if s.ready]
        if not ready:
            click.echo("\n".join(lines), err=True)
            return
        first = ready[0]
        lines.append("Try:")
        lines.append("  " + _example_request(first, base))
        click.echo("\n".join(lines), err=True)

    app = BatonApp(engine, max_body_bytes=settings.max_body_bytes, on_ready=announce)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop",
                            http="httptools", lifespan="on", access_log=False,
                            log_level=settings.log_level, timeout_graceful_shutdown=int(
                                settings.drain_timeout))
    # uvicorn drains, then re-raises the signal it caught; a drained shutdown exits 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per registry poll
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except SystemExit:
        if server.started:
            raise
    if not server.started:
        raise BatonError(f"the HTTP server could not start on {base} (see the log above: "
                         "is the port in use?)", code="SERVER_START_FAILED")


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
