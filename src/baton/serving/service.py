"""The engine: every model version served by one process, started and stopped as a whole.

Which version takes which traffic is the version table's (:mod:`baton.serving.versions`);
a version's request path is :class:`~baton.serving.model.ModelService`'s; drift alerts run
as their own tasks (:mod:`baton.monitor.alerts`). The engine starts, replaces and closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from baton.monitor.alerts import AlertSender, DriftWatch
from baton.monitor.metrics import EngineMetrics
from baton.monitor.predlog import PredictionLog
from baton.monitor.stats import render_stats
from baton.serving.model import ModelService
from baton.serving.observe import EngineObserver
from baton.serving.versions import VersionTable
from baton.serving.workers import worker_spec
from baton.settings import Settings

__all__ = ["Engine", "ModelService", "ModelSource", "StreamTask", "worker_spec"]

log = logging.getLogger("baton.serving")


class ModelSource(Protocol):
    """Where an engine's models come from when not from the command line (a
    ``RegistryFollower``); shown under ``source`` in ``/v1/models``."""

    def describe(self) -> dict[str, Any]: ...


class StreamTask(Protocol):
    """A stream binding run with the engine (a ``StreamPipeline``)."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    @property
    def unreachable(self) -> str | None: ...


class Engine:
    """Every model served by one process; started and stopped as a whole."""

    def __init__(self, services: list[ModelService], settings: Settings,
                 metrics: EngineMetrics | None = None,
                 predlog: PredictionLog | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predlog = predlog
        #: Live, canary and shadow versions: the one list of what is served.
        self.versions = VersionTable(services)
        #: Long-running helpers (e.g. a registry follower) started with the engine.
        self.background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        #: False until the background helpers' first pass is done (e.g. first registry sync).
        self.synced = True
        #: Where models come from, when not from the command line (e.g. a registry follower).
        self.source: ModelSource | None = None
        #: Stream bindings, started with the engine and drained first when it closes.
        self.streams: list[StreamTask] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        #: What monitoring reads (``/metrics`` and ``/v1/stats``), with the one sampler.
        self.observer = EngineObserver(self)
        webhook = settings.drift_webhook
        #: Drift alerts: posted by their own task, so a slow webhook delays no check.
        self.alerts = AlertSender(webhook) if webhook else None
        self.drift = DriftWatch(self.versions.services, settings.drift_interval, self.alerts)

    @property
    def models(self) -> Mapping[str, ModelService]:
        """The live version of each model, by name (read-only)."""
        return self.versions.live

    def get(self, name: str, version: str | None = None) -> ModelService:
        """The version that answers a request: a canary split applies to unversioned ones."""
        return self.versions.get(name, version)

    def lookup(self, name: str, version: str | None = None) -> ModelService:
        """The live version of ``name``, or exactly ``version`` (live or canary candidate)."""
        return self.versions.lookup(name, version)

    def add_canary(self, candidate: ModelService, weight: float) -> None:
        """Send ``weight`` (0..1) of the unversioned requests for ``candidate``'s model to
        it. Before :meth:`start`, the engine starts it; after, the caller has."""
        self.versions.add_canary(candidate, weight)
        if self._started:
            self._instrument(candidate)

    def add_shadow(self, candidate: ModelService) -> None:
        """Mirror the live traffic of ``candidate``'s model to it (answers never returned).
        Before :meth:`start`, the engine starts it; after, the caller has."""
        self.versions.add_shadow(candidate)
        if self._started:
            self._instrument(candidate)

    @property
    def ready(self) -> bool:
        return self.synced and all(s.ready for s in self.models.values())

    async def start(self) -> None:
        """Start every model's workers; a model that fails to load is reported, not fatal."""
        self._started = True
        services = self.versions.services()
        if self.metrics is not None:
            self.metrics.watch(self.observer)
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.open)  # no-op when serve opened it already
            self.background.append(self.predlog.run)
        self.background.append(self.drift.run)
        if self.alerts is not None:
            self.background.append(self.alerts.run)
        for svc in services:
            self._instrument(svc)
        results = await asyncio.gather(*(s.pool.start() for s in services),
                                       return_exceptions=True)
        for svc, res in zip(services, results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s@%s failed to load: %s", svc.name, svc.version, res)
            else:
                log.info("%s@%s ready (%s, pid %s)", svc.name, svc.version, svc.bundle.digest,
                         ",".join(str(w.pid) for w in svc.pool.workers if w))
        loop = asyncio.get_running_loop()
        jobs = [*self.background, *(stream.run for stream in self.streams)]
        self._tasks = [loop.create_task(job()) for job in jobs]

    async def replace(self, new: ModelService) -> ModelService | None:
        """Serve ``new`` in place of the live version of its model, with no failed request.

        ``new`` must already be started and warmed up. Requests already queued on the old
        version finish there; any that reach it while it closes are handed to ``new``.
        """
        self._instrument(new)
        old = self.versions.set_live(new)
        if old is not None:
            await old.close(self.settings.drain_timeout)
        return old

    def _instrument(self, svc: ModelService) -> None:
        svc.instrument(self.metrics, self.predlog, self.settings.quality_window)

    async def remove(self, name: str) -> None:
        """Take ``name`` out of service: its live version and any canary or shadow."""
        removed = self.versions.remove(name)
        if removed.shadow is not None:
            await removed.shadow.drain()
        await asyncio.gather(*(s.close(self.settings.drain_timeout)
                               for s in removed.services()))

    async def close(self) -> None:
        """Drain streams first (their batches finish and are acknowledged), then models."""
        if self.streams:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.stop() for s in self.streams)),
                                       self.settings.drain_timeout)
            except TimeoutError:
                log.warning("streams did not drain within %.0fs", self.settings.drain_timeout)
        for task in self._tasks:
            task.cancel()
        if self.predlog is not None:
            await self.predlog.aclose()  # writes what is queued; never fails the shutdown
        services = self.versions.services()
        await asyncio.gather(*(s.close(self.settings.drain_timeout) for s in services))

    def stats(self) -> dict[str, Any]:
        """Live figures per served version: traffic, errors by stage, latency, workers,
        resources (``GET /v1/stats``; :func:`baton.monitor.stats.render_stats`)."""
        return render_stats(self.observer)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for s in self.models.values():
            item: dict[str, Any] = {"name": s.name, "version": s.version, "ready": s.ready,
                                    "digest": s.bundle.digest, "pid": os.getpid()}
            traffic = self.versions.traffic(s.name)
            if traffic is not None:
                item["traffic"] = traffic
            out.append(item)
        return out
