"""``baton serve``: open bundles, build their environments, run the HTTP engine."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import click

from baton.bundle.loader import open_bundle
from baton.env.builder import EnvBuilder
from baton.errors import BatonError
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


def build_engine(refs: list[Path], settings: Settings) -> Engine:
    builder = EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                         offline=settings.offline)
    services = []
    for ref in refs:
        bundle = open_bundle(ref, settings.bundles_dir)
        env = builder.ensure(bundle.manifest.environment)
        how = "cached" if env.cached else f"built in {env.build_seconds:.1f}s"
        click.echo(f"{bundle.name} {bundle.version} {bundle.digest[:19]}…  environment "
                   f"{env.key[:12]} ({how})", err=True)
        services.append(ModelService(bundle, env, settings))
    return Engine(services, settings)


def run_server(refs: list[Path], settings: Settings) -> None:
    import uvicorn

    from baton.server.app import BatonApp

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    engine = build_engine(refs, settings)
    base = f"http://{settings.host}:{settings.port}"

    def announce(engine: Engine) -> None:
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
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise BatonError(f"the HTTP server could not start on {base} (see the log above: "
                         "is the port in use?)", code="SERVER_START_FAILED")


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
