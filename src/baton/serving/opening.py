"""Open a model's service from a reference: the one way every front end does it.

``baton serve`` (through :mod:`baton.serving.assembly`), ``baton check`` and ``baton score``
turn a reference (a bundle folder, a ``.baton`` archive or, with a registry, ``NAME@VERSION``)
into a :class:`~baton.serving.service.ModelService` here, not started. The steps are exposed
one by one for the front ends that report or act between them: ``check`` reports opening
the bundle and resolving its environment as two stages, and ``score`` reads its input before
any environment is built, so a bad file fails first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from baton.bundle.archive import ArchiveLimits
from baton.bundle.loader import Bundle, open_bundle
from baton.env.builder import EnvBuilder, Environment
from baton.errors import BatonError
from baton.runtime.template import PoolTemplate
from baton.serving.gate import CANDIDATE, ServeGate, pinned_key
from baton.serving.workers import worker_spec
from baton.settings import Settings

if TYPE_CHECKING:  # the engine's modules: open_ahead runs before they are imported
    from baton.registry.client import RegistryClient
    from baton.serving.service import ModelService

log = logging.getLogger("baton.serve")


class RegistryAccess(NamedTuple):
    """A registry client and the gate that checks what it hands over."""

    client: RegistryClient
    gate: ServeGate


def env_builder(settings: Settings) -> EnvBuilder:
    """The environment builder the settings describe (cache, wheelhouse, offline)."""
    return EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                      offline=settings.offline, r_packages=settings.r_packages)


def open_local(ref: str | Path, settings: Settings,
               expected_digest: str | None = None) -> Bundle:
    """The bundle folder or archive at ``ref``, verified (an archive within the settings'
    limits; against ``expected_digest`` when given) and opened."""
    return open_bundle(ref, settings.bundles_dir, expected_digest,
                       limits=ArchiveLimits.from_settings(settings))


def ensure_environment(bundle: Bundle, settings: Settings,
                       builder: EnvBuilder | None = None) -> Environment:
    """``bundle``'s isolated environment: from the cache, or built now."""
    return (builder or env_builder(settings)).ensure(bundle.manifest.environment)


def env_note(env: Environment) -> str:
    """How the environment came to be, as front ends print it: ``cached`` or ``built in
    1.2s``."""
    return "cached" if env.cached else f"built in {env.build_seconds:.1f}s"


def local_service(bundle: Bundle, settings: Settings,
                  builder: EnvBuilder | None = None) -> ModelService:
    """``bundle``'s service with its environment ready (not started); logs what it serves."""
    from baton.serving.service import ModelService

    return ModelService(bundle, _environment(bundle, settings, builder), settings)


def _environment(bundle: Bundle, settings: Settings, builder: EnvBuilder | None) -> Environment:
    env = ensure_environment(bundle, settings, builder)
    log.info("%s %s %s…  environment %s (%s)", bundle.name, bundle.version,
             bundle.digest[:19], env.key[:12], env_note(env))
    return env


class Opened(NamedTuple):
    """A local bundle opened ahead of the engine: verified, its environment ready, and its
    worker template (when its workers fork from one) already importing its libraries."""

    bundle: Bundle
    env: Environment
    template: PoolTemplate

    def service(self, settings: Settings) -> ModelService:
        """The bundle's service (not started), its pool holding the template."""
        from baton.serving.service import ModelService

        return ModelService(self.bundle, self.env, settings, template=self.template)


def open_ahead(ref: str | Path, settings: Settings,
               builder: EnvBuilder | None = None) -> Opened:
    """What :func:`local_service` does up to the service, then the template's start:
    ``baton serve`` calls it before it imports the engine, so that the model's imports (the
    longest part of its start) run beside the engine's own. The bundle is verified first:
    the template runs the model's code (it unpickles the artifact)."""
    bundle = open_local(ref, settings)
    env = _environment(bundle, settings, builder)
    template = PoolTemplate(worker_spec(bundle, env, settings))
    template.prewarm()
    return Opened(bundle, env, template)


def open_service(ref: str, settings: Settings, *, registry: str | None = None) -> ModelService:
    """The service for ``ref`` (not started): a local bundle when ``ref`` is a path, else,
    with ``registry``, a version that registry signed into staging or production."""
    if Path(ref).exists():
        return local_service(open_local(ref, settings), settings)
    if registry is not None:
        return registry_version(registry, ref, settings)
    raise BatonError(f"no bundle at {ref} (give a folder or an archive, or --registry URL "
                     "to score NAME@VERSION)", code="BUNDLE_NOT_FOUND", details={"ref": ref})


def registry_version(url: str | None, ref: str, settings: Settings) -> ModelService:
    """A version to score in batch (``baton score --registry``): one the registry signed
    into staging or production and nobody rejected; pulled, verified, not started."""
    from baton.serving.follow import prepare_from_registry

    client, gate = open_registry(url, "staging", settings)
    try:
        return prepare_from_registry(client, ref, settings, gate, CANDIDATE)
    finally:
        client.close()


def open_registry(url: str | None, stage: str, settings: Settings) -> RegistryAccess:
    """A client for the registry (``url``, else the saved login) and the gate that checks
    its signed decisions for an engine serving ``stage``."""
    from baton.profile import open_registry_client, registry_credentials

    gate = ServeGate(pinned_key(registry_credentials(url)[0], settings), stage)
    return RegistryAccess(open_registry_client(url, settings), gate)
