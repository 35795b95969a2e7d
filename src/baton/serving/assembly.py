"""Assemble an engine from a typed spec: bundles, registry, canary/shadow, streams, labels.

The library builds the engine; ``baton serve`` (and any other front end: a test, an image
entrypoint, a cluster backend) only turns its options into an :class:`EngineSpec`
(:mod:`baton.deployment`). Services are opened by :mod:`baton.serving.opening`, as
``baton check`` and ``baton score`` open theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from baton.deployment import (
    CanarySpec,
    DeploymentSpec,
    EngineSpec,
    LabelsSpec,
    RegistrySpec,
    ShadowSpec,
    StreamSpec,
)
from baton.env.builder import EnvBuilder
from baton.errors import BundleError, SettingsError
from baton.monitor.metrics import EngineMetrics
from baton.monitor.predlog import open_prediction_log
from baton.serving.gate import CANDIDATE, LIVE, check_stage, local_ref, refuse_local
from baton.serving.opening import (
    Opened,
    RegistryAccess,
    env_builder,
    local_service,
    open_local,
    open_registry,
)
from baton.serving.service import Engine, ModelService
from baton.settings import Settings

__all__ = ["build_engine"]


def build_engine(spec: EngineSpec, settings: Settings,
                 opened: Mapping[str, Opened] | None = None) -> Engine:
    """The engine ``spec`` describes, not started. With a registry, everything it serves
    passes the serve-time gate (:mod:`baton.serving.gate`) first. ``opened``: local
    bundles of deployments already opened, by reference (``open_ahead``)."""
    registry = _registry(spec.registry, settings)
    builder = env_builder(settings)
    deployments = list(spec.deployments)
    ahead = dict(opened or {})
    services = [_deployed(d, settings, builder, registry, ahead) for d in deployments]
    for unused in ahead.values():  # none, unless a caller opened what is not deployed
        unused.template.abandon()
    predlog = open_prediction_log(settings)
    engine = Engine(services, settings, EngineMetrics() if settings.metrics else None, predlog)
    for d, svc in zip(deployments, services, strict=True):
        if d.stream is not None:
            _add_stream(engine, svc, d.stream)
        if d.labels is not None:
            _add_labels(engine, svc, d.labels)
    following = False
    if registry is not None and spec.registry is not None:
        from baton.serving.follow import RegistryFollower

        # No deployments: follow the stage. Registry refs given: keep checking just those.
        follower = RegistryFollower(engine, registry.client, settings, registry.gate,
                                    interval=spec.registry.poll, follow=not deployments)
        engine.background.append(follower.run)
        following = follower.follow
        engine.source = follower
        if following:
            engine.synced = False
    if spec.canary is not None:
        _add_canary(engine, spec.canary, settings, builder, registry, following)
    if spec.shadow is not None:
        _add_shadow(engine, spec.shadow, settings, builder, registry, following)
    if spec.stream is not None:
        _add_stream(engine, _only_model(engine, "--input/--output bind"), spec.stream)
    if spec.labels is not None:
        _add_labels(engine, _only_model(engine, "--labels binds"), spec.labels)
    return engine


def _registry(spec: RegistrySpec | None, settings: Settings) -> RegistryAccess | None:
    if spec is None:
        return None
    return open_registry(spec.url, check_stage(spec.stage), settings)


def _deployed(d: DeploymentSpec, settings: Settings, builder: EnvBuilder,
              registry: RegistryAccess | None, ahead: dict[str, Opened]) -> ModelService:
    own = settings
    if d.workers:
        own = replace(own, workers=d.workers)
    if d.timeout:
        own = replace(own, timeout=d.timeout)
    if registry is None and d.bundle in ahead:  # a bundle deployed twice: opened again
        return ahead.pop(d.bundle).service(own)
    return _open(d.bundle, own, builder, registry, LIVE, "bundle")


def _candidate(ref: str, settings: Settings, builder: EnvBuilder,
               registry: RegistryAccess | None, option: str) -> ModelService:
    """A canary or shadow candidate: a local bundle, or a version the registry signed."""
    return _open(ref, settings, builder, registry, CANDIDATE, option,
                 " (give a path, or --registry to use NAME@VERSION)")


def _open(ref: str, settings: Settings, builder: EnvBuilder, registry: RegistryAccess | None,
          role: str, option: str, hint: str = "") -> ModelService:
    """Without a registry, the local bundle at ``ref``; with one, the version ``ref`` names
    if a signed decision lets ``role`` serve it (a local path is refused)."""
    if registry is not None:
        if local_ref(ref):
            raise refuse_local(ref, option)
        from baton.serving.follow import prepare_from_registry

        return prepare_from_registry(registry.client, ref, settings, registry.gate, role)
    if Path(ref).exists():
        return local_service(open_local(ref, settings), settings, builder)
    raise BundleError(f"no bundle at {ref}{hint}", code="BUNDLE_NOT_FOUND")


def _add_canary(engine: Engine, spec: CanarySpec, settings: Settings, builder: EnvBuilder,
                registry: RegistryAccess | None, following: bool) -> None:
    cand = _candidate(spec.ref, settings, builder, registry, "--canary")
    if not following:
        _check_candidate(engine, cand, "--canary")
    engine.add_canary(cand, spec.weight)


def _add_shadow(engine: Engine, spec: ShadowSpec, settings: Settings, builder: EnvBuilder,
                registry: RegistryAccess | None, following: bool) -> None:
    cand = _candidate(spec.ref, settings, builder, registry, "--shadow")
    if not following:
        _check_candidate(engine, cand, "--shadow")
    engine.add_shadow(cand)


def _check_candidate(engine: Engine, cand: ModelService, option: str) -> None:
    """A candidate stands beside a live version: one this engine serves (an engine that
    follows a registry learns its live versions later)."""
    if cand.name not in engine.models:
        raise SettingsError(f"{option} names {cand.name}@{cand.version}, but no version of "
                            f"{cand.name} is served here (serving: "
                            f"{', '.join(engine.models) or 'nothing'})")


def _only_model(engine: Engine, binding: str) -> ModelService:
    """The one model an engine-wide stream or labels binding applies to."""
    if len(engine.models) != 1:
        raise SettingsError(f"{binding} one model: serve exactly one bundle "
                            "(several models: use a deployment file)")
    [svc] = engine.models.values()
    return svc


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
    from baton.streams.binding import StreamBinding
    from baton.streams.pipeline import StreamPipeline

    for url in (spec.input, spec.output, spec.dead_letter):
        parse_url(url)
    if svc.records is None:
        raise SettingsError(f"{svc.name} has a tensor contract; streams carry records")
    binding = StreamBinding(svc.name, spec.input, spec.output, spec.dead_letter, spec.group,
                            spec.max_batch, in_flight=spec.in_flight)
    engine.streams.append(StreamPipeline(binding, lambda: engine.get(svc.name)))
