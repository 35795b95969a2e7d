"""``baton serve``: open bundles, build their environments, run the HTTP engine."""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from baton.bundle.loader import open_bundle
from baton.deployment import DeploymentSpec, LabelsSpec, StreamSpec, load_deployments
from baton.env.builder import EnvBuilder
from baton.errors import BatonError, BundleError, SettingsError
from baton.monitor.metrics import EngineMetrics
from baton.monitor.predlog import open_prediction_log
from baton.serving.service import Engine, ModelService
from baton.serving.traffic import Canary, Shadow
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


def _local_service(ref: Path, settings: Settings, builder: EnvBuilder) -> ModelService:
    bundle = open_bundle(ref, settings.bundles_dir)
    env = builder.ensure(bundle.manifest.environment)
    how = "cached" if env.cached else f"built in {env.build_seconds:.1f}s"
    click.echo(f"{bundle.name} {bundle.version} {bundle.digest[:19]}…  environment "
               f"{env.key[:12]} ({how})", err=True)
    return ModelService(bundle, env, settings)


@dataclass(frozen=True)
class ServeOptions:
    """What ``baton serve`` was asked for besides the engine settings."""

    bundles: list[str]
    registry: str | None = None
    stage: str = "production"
    poll: float = 2.0
    canary: str | None = None
    shadow: str | None = None
    input: str | None = None
    output: str | None = None
    dead_letter: str | None = None
    group: str | None = None
    max_batch: int = 256
    deployment: Path | None = None
    labels: str | None = None


def _candidate(ref: str, settings: Settings, builder: EnvBuilder, client: Any) -> ModelService:
    """A canary or shadow candidate: a local bundle, or a staging/production registry ref."""
    if Path(ref).exists():
        return _local_service(Path(ref), settings, builder)
    if client is None:
        raise BundleError(f"no bundle at {ref} (give a path, or --registry to use "
                          "NAME@VERSION)", code="BUNDLE_NOT_FOUND")
    from baton.serving.follow import prepare_from_registry

    return prepare_from_registry(client, ref, settings, ("staging", "production"))


def build_engine(opts: ServeOptions, settings: Settings) -> Engine:
    builder = EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                         offline=settings.offline)
    client = None
    if opts.registry:
        from baton.cli.config import registry_credentials
        from baton.registry.client import RegistryClient

        client = RegistryClient(*registry_credentials(opts.registry))
    deployments = [DeploymentSpec(ref) for ref in opts.bundles]
    if opts.deployment is not None:
        deployments += load_deployments(opts.deployment)
    services = [_deployed(d, settings, builder, client, opts.stage) for d in deployments]
    predlog = open_prediction_log(settings)
    engine = Engine(services, settings, EngineMetrics() if settings.metrics else None, predlog)
    for d, svc in zip(deployments, services, strict=True):
        if d.stream is not None:
            _add_stream(engine, svc, d.stream)
        if d.labels is not None:
            _add_labels(engine, svc, d.labels)
    if client is not None and not deployments:
        from baton.serving.follow import RegistryFollower

        follower = RegistryFollower(engine, client, settings, stage=opts.stage,
                                    interval=opts.poll)
        engine.background.append(follower.run)
        engine.source = follower
        engine.synced = False
    if opts.canary:
        ref, _, percent = opts.canary.rpartition("=")
        try:
            weight = float(percent) / 100
        except ValueError:
            weight = -1.0
        if not ref or not 0 <= weight <= 1:
            raise SettingsError(f"--canary takes REF=PERCENT with PERCENT in 0..100, got "
                                f"{opts.canary!r}")
        cand = _candidate(ref, settings, builder, client)
        _check_candidate(engine, cand, "--canary")
        engine.canaries[cand.name] = Canary(cand, weight)
    if opts.shadow:
        cand = _candidate(opts.shadow, settings, builder, client)
        _check_candidate(engine, cand, "--shadow")
        engine.shadows[cand.name] = Shadow(cand)
    if opts.input or opts.output or (opts.dead_letter and not opts.labels):
        _bind_stream(engine, opts)
    if opts.labels:
        _bind_labels(engine, opts)
    return engine


def _check_candidate(engine: Engine, cand: ModelService, option: str) -> None:
    if engine.source is None and cand.name not in engine.models:
        raise SettingsError(f"{option} names {cand.name}@{cand.version}, but no version of "
                            f"{cand.name} is served here (serving: "
                            f"{', '.join(engine.models) or 'nothing'})")


def _deployed(d: DeploymentSpec, settings: Settings, builder: EnvBuilder, client: Any,
              stage: str) -> ModelService:
    overrides = {k: v for k, v in (("workers", d.workers), ("timeout", d.timeout)) if v}
    own = replace(settings, **overrides) if overrides else settings
    if Path(d.bundle).exists():
        return _local_service(Path(d.bundle), own, builder)
    if client is not None:
        from baton.serving.follow import prepare_from_registry

        return prepare_from_registry(client, d.bundle, own, (stage,))
    raise BundleError(f"no bundle at {d.bundle}", code="BUNDLE_NOT_FOUND")


def _bind_stream(engine: Engine, opts: ServeOptions) -> None:
    missing = [n for n, v in (("--input", opts.input), ("--output", opts.output),
                              ("--dead-letter", opts.dead_letter)) if not v]
    if missing:
        raise SettingsError(f"a stream binding needs --input, --output and --dead-letter; "
                            f"missing {', '.join(missing)}")
    if len(engine.models) != 1:
        raise SettingsError("--input/--output bind one model: serve exactly one bundle "
                            "(several models: use a deployment file)")
    [svc] = engine.models.values()
    _add_stream(engine, svc, StreamSpec(opts.input or "", opts.output or "",
                                        opts.dead_letter or "", opts.group or "",
                                        opts.max_batch))


def _bind_labels(engine: Engine, opts: ServeOptions) -> None:
    if not opts.dead_letter:
        raise SettingsError("a labels binding needs --dead-letter (where labels that cannot "
                            "be attached go); missing --dead-letter")
    if len(engine.models) != 1:
        raise SettingsError("--labels binds one model: serve exactly one bundle "
                            "(several models: use a deployment file)")
    [svc] = engine.models.values()
    _add_labels(engine, svc, LabelsSpec(opts.labels or "", opts.dead_letter,
                                        f"{opts.group}-labels" if opts.group else "",
                                        opts.max_batch))


def _add_labels(engine: Engine, svc: ModelService, spec: LabelsSpec) -> None:
    """Read true values for ``svc``'s model from a stream (see baton.streams.labels)."""
    from baton.monitor.quality import prediction_field
    from baton.streams.base import parse_url
    from baton.streams.labels import LabelsPipeline, labels_binding

    for url in (spec.input, spec.dead_letter):
        parse_url(url)
    if engine.predlog is None:
        raise SettingsError(f"labels for {svc.name} need the prediction log, which is off "
                            "(BATON_PREDICTION_LOG_SAMPLE is 0)")
    if prediction_field(svc.contract) is None:
        raise SettingsError(f"{svc.name} takes no labels: it has no records prediction "
                            "field to compare them with")
    binding = labels_binding(svc.name, spec.input, spec.dead_letter, spec.group,
                             spec.max_batch)
    engine.streams.append(LabelsPipeline(binding, lambda: engine.lookup(svc.name)))


def _add_stream(engine: Engine, svc: ModelService, spec: StreamSpec) -> None:
    from baton.streams.base import parse_url
    from baton.streams.pipeline import StreamBinding, StreamPipeline

    for url in (spec.input, spec.output, spec.dead_letter):
        parse_url(url)
    if svc.records is None:
        raise SettingsError(f"{svc.name} has a tensor contract; streams carry records")
    binding = StreamBinding(svc.name, spec.input, spec.output, spec.dead_letter, spec.group,
                            spec.max_batch, in_flight=spec.in_flight)
    engine.streams.append(StreamPipeline(binding, lambda: engine.get(svc.name)))


def run_server(opts: ServeOptions, settings: Settings) -> None:
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
