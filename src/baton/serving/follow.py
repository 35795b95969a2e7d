"""Serve a registry stage: load what is promoted, warm it up, switch traffic, drop the old.

The follower polls the registry. When the digest in the stage changes for a model (a
promotion or a rollback), it pulls the new archive (verified against its digest), extracts
it (verified again), builds or reuses its environment, starts its workers, scores the
bundle's samples as a warm-up, and only then swaps it in (see ``Engine.replace``). A
version that fails any step is never served; the live one keeps serving and the failure
is visible in ``/v1/models``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from baton.bundle.loader import open_bundle
from baton.env.builder import EnvBuilder
from baton.errors import BatonError
from baton.serving.service import Engine, ModelService
from baton.settings import Settings

log = logging.getLogger("baton.follow")

#: Seconds before a version that failed to load is tried again.
RETRY_FAILED_AFTER = 60.0


class RegistrySource(Protocol):
    def list(self, name: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        ...

    def show(self, ref: str) -> dict[str, Any]:
        ...

    def pull(self, ref: str, dest: Path) -> tuple[Path, str]:
        ...


class StageNotAllowed(BatonError):
    code = "STAGE_NOT_ALLOWED"
    http_status = 403
    exit_code = 6


def prepare_from_registry(client: RegistrySource, ref: str, settings: Settings,
                          allowed: tuple[str, ...]) -> ModelService:
    """Pull ``ref`` if its stage is allowed, verify it, and build its service (not started)."""
    info = client.show(ref)
    if info["stage"] not in allowed:
        raise StageNotAllowed(
            f"{info['name']}@{info['version']} ({info['digest']}) is {info['stage']}; this "
            f"engine serves only {' or '.join(allowed)} bundles",
            details={"stage": info["stage"], "allowed": list(allowed)})
    archive, digest = client.pull(f"{info['name']}@{info['digest']}",
                                  settings.home / "pulls")
    bundle = open_bundle(archive, settings.bundles_dir, expected_digest=digest)
    builder = EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                         offline=settings.offline)
    return ModelService(bundle, builder.ensure(bundle.manifest.environment), settings)


class RegistryFollower:
    def __init__(self, engine: Engine, client: RegistrySource, settings: Settings, *,
                 stage: str = "production", interval: float = 2.0) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.stage = stage
        self.interval = interval
        self.failed: dict[str, tuple[float, str]] = {}
        self.last_error: str | None = None
        self.syncs = 0

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
                self.last_error = None
                self.engine.synced = True  # ready only once the registry has answered
            except BatonError as exc:
                self.last_error = exc.message
                log.warning("registry sync failed: %s", exc.message)
            self.syncs += 1
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        rows = await asyncio.to_thread(self.client.list, None, self.stage)
        wanted = {row["name"]: row for row in rows}
        digests = {row["digest"] for row in rows}
        self.failed = {d: f for d, f in self.failed.items() if d in digests}
        for name, info in wanted.items():
            live = self.engine.models.get(name)
            if live is not None and live.bundle.digest == info["digest"]:
                continue
            failed = self.failed.get(info["digest"])
            if failed and time.monotonic() - failed[0] < RETRY_FAILED_AFTER:
                continue
            await self.load(f"{name}@{info['digest']}")
        for name in [n for n in self.engine.models if n not in wanted]:
            log.info("%s left %s: unloading it", name, self.stage)
            await self.engine.remove(name)

    async def load(self, ref: str) -> None:
        started = time.perf_counter()
        svc: ModelService | None = None
        try:
            svc = await asyncio.to_thread(prepare_from_registry, self.client, ref,
                                          self.settings, (self.stage,))
            await svc.pool.start()
            await svc.warm_up()
        except BatonError as exc:
            digest = ref.partition("@")[2]
            self.failed[digest] = (time.monotonic(), exc.message)
            log.error("not serving %s: %s", ref, exc.message)
            if svc is not None:
                await svc.close(5.0)
            return
        old = await self.engine.replace(svc)
        log.info("%s@%s now serves (%s) in %.2fs%s", svc.name, svc.version, svc.bundle.digest,
                 time.perf_counter() - started,
                 f", replacing {old.version}" if old is not None else "")

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, "syncs": self.syncs, "last_error": self.last_error,
                "failed": {d: reason for d, (_, reason) in self.failed.items()}}
