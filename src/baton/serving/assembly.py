"""Assemble an engine from a typed spec: bundles, registry, canary/shadow, streams, labels.

The library builds the engine; ``baton serve`` (and any other front end: a test, an image
entrypoint, a cluster backend) only turns its options into an :class:`EngineSpec`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from baton.bundle.archive import ArchiveLimits
from baton.bundle.loader import open_bundle
from baton.deployment import DeploymentSpec, LabelsSpec, StreamSpec, load_deployments
from baton.env.builder import EnvBuilder
from baton.errors import BundleError, SettingsError
from baton.monitor.metrics import EngineMetrics
from baton.monitor.predlog import open_prediction_log
from baton.serving.gate import (
    CANDIDATE,
    LIVE,
    ServeGate,
    check_stage,
    local_ref,
    pinned_key,
    refuse_local,
)
from baton.serving.service import Engine, ModelService
from baton.serving.traffic import Canary, Shadow
from baton.settings import Settings

log = logging.getLogger("baton.serve")


def _local_service(ref: Path, settings: Settings, builder: EnvBuilder) -> ModelService:
    bundle = open_bundle(ref, settings.bundles_dir,
                         limits=ArchiveLimits.from_settings(settings))
    env = builder.ensure(bundle.manifest.environment)
    how = "cached" if env.cached else f"built in {env.build_seconds:.1f}s"
    log.info("%s %s %s…  environment %s (%s)", bundle.name, bundle.version,
             bundle.digest[:19], env.key[:12], how)
    return ModelService(bundle, env, settings)


@dataclass(frozen=True)
class EngineSpec:
    """What an engine serves, besides its settings (``baton serve``'s options)."""

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


def _candidate(ref: str, settings: Settings, builder: EnvBuilder, client: Any,
               gate: ServeGate | None, option: str) -> ModelService:
    """A canary or shadow candidate: a local bundle, or a version the registry signed."""
    if gate is not None:
        if local_ref(ref):
            raise refuse_local(ref, option)
        from baton.serving.follow import prepare_from_registry

        return prepare_from_registry(client, ref, settings, gate, CANDIDATE)
    if Path(ref).exists():
        return _local_service(Path(ref), settings, builder)
    raise BundleError(f"no bundle at {ref} (give a path, or --registry to use "
                      "NAME@VERSION)", code="BUNDLE_NOT_FOUND")


def registry_version(url: str | None, ref: str, settings: Settings) -> ModelService:
    """A version to score in batch (``baton score --registry``): one the registry signed
    into staging or production and nobody rejected; pulled, verified, not started."""
    from baton.serving.follow import prepare_from_registry

    client, gate = _open_registry(url, "staging", settings)
    try:
        return prepare_from_registry(client, ref, settings, gate, CANDIDATE)
    finally:
        client.close()


def _open_registry(url: str | None, stage: str, settings: Settings) -> tuple[Any, ServeGate]:
    """A client for the registry and the gate that checks its signed decisions."""
    from baton.profile import open_registry_client, registry_credentials

    gate = ServeGate(pinned_key(registry_credentials(url)[0], settings), stage)
    return open_registry_client(url, settings), gate


def build_engine(opts: EngineSpec, settings: Settings) -> Engine:
    """The engine ``opts`` describes, not started. With a registry, everything it serves
    passes the serve-time gate (:mod:`baton.serving.gate`) first."""
    check_stage(opts.stage)
    builder = EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                         offline=settings.offline)
    client, gate = _open_registry(opts.registry, opts.stage, settings) \
        if opts.registry else (None, None)
    deployments = [DeploymentSpec(ref) for ref in opts.bundles]
    if opts.deployment is not None:
        deployments += load_deployments(opts.deployment)
    services = [_deployed(d, settings, builder, client, gate) for d in deployments]
    predlog = open_prediction_log(settings)
    engine = Engine(services, settings, EngineMetrics() if settings.metrics else None, predlog)
    for d, svc in zip(deployments, services, strict=True):
        if d.stream is not None:
            _add_stream(engine, svc, d.stream)
        if d.labels is not None:
            _add_labels(engine, svc, d.labels)
    follower = None
    if gate is not None:
        from baton.serving.follow import RegistryFollower

        # No BUNDLES: follow the stage. Registry refs given: keep checking just those.
        follower = RegistryFollower(engine, client, settings, gate, interval=opts.poll,
                                    follow=not deployments)
        engine.background.append(follower.run)
        if follower.follow:
            engine.source, engine.synced = follower, False
    if opts.canary:
        ref, weight = _canary_option(opts.canary)
        cand = _candidate(ref, settings, builder, client, gate, "--canary")
        _check_candidate(engine, cand, "--canary")
        engine.canaries[cand.name] = Canary(cand, weight)
    if opts.shadow:
        cand = _candidate(opts.shadow, settings, builder, client, gate, "--shadow")
        _check_candidate(engine, cand, "--shadow")
        engine.shadows[cand.name] = Shadow(cand)
    engine.source = follower
    if opts.input or opts.output or (opts.dead_letter and not opts.labels):
        _bind_stream(engine, opts)
    if opts.labels:
        _bind_labels(engine, opts)
    return engine


def _canary_option(value: str) -> tuple[str, float]:
    ref, _, percent = value.rpartition("=")
    try:
        weight = float(percent) / 100
    except ValueError:
        weight = -1.0
    if not ref or not 0 <= weight <= 1:
        raise SettingsError(f"--canary takes REF=PERCENT with PERCENT in 0..100, got "
                            f"{value!r}", details={"field": "canary", "value": value})
    return ref, weight


def _check_candidate(engine: Engine, cand: ModelService, option: str) -> None:
    if engine.source is None and cand.name not in engine.models:
        raise SettingsError(f"{option} names {cand.name}@{cand.version}, but no version of "
                            f"{cand.name} is served here (serving: "
                            f"{', '.join(engine.models) or 'nothing'})")


def _deployed(d: DeploymentSpec, settings: Settings, builder: EnvBuilder, client: Any,
              gate: ServeGate | None) -> ModelService:
    overrides = {k: v for k, v in (("workers", d.workers), ("timeout", d.timeout)) if v}
    own = replace(settings, **overrides) if overrides else settings
    if gate is not None:
        if local_ref(d.bundle):
            raise refuse_local(d.bundle, "bundle")
        from baton.serving.follow import prepare_from_registry

        return prepare_from_registry(client, d.bundle, own, gate, LIVE)
    if Path(d.bundle).exists():
        return _local_service(Path(d.bundle), own, builder)
    raise BundleError(f"no bundle at {d.bundle}", code="BUNDLE_NOT_FOUND")


def _bind_stream(engine: Engine, opts: EngineSpec) -> None:
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


def _bind_labels(engine: Engine, opts: EngineSpec) -> None:
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
