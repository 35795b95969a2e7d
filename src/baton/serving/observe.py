"""The engine as monitoring sees it: serving's implementation of
:class:`baton.monitor.state.Observable`.

One :class:`EngineObserver` per engine, with the engine's one process sampler, feeds both
``/metrics`` and ``/v1/stats``, so the two list the same versions (from the version table)
and the same CPU and memory samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from baton.monitor.metrics import ProcessSampler
from baton.monitor.state import ModelSnapshot, WorkerState
from baton.runtime.worker import Worker

if TYPE_CHECKING:
    from baton.monitor.predlog import PredictionLog
    from baton.serving.service import Engine
    from baton.serving.versions import VersionEntry


class EngineObserver:
    """Snapshots of every version in the engine's version table, read on demand."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sampler = ProcessSampler()

    def snapshots(self) -> list[ModelSnapshot]:
        sampled: set[int] = set()
        out = [self._snapshot(entry, sampled) for entry in self.engine.versions.entries()]
        self.sampler.forget_except(sampled)
        return out

    def stream_states(self) -> list[dict[str, Any]]:
        return [st.describe() for st in self.engine.streams]

    def prediction_log(self) -> PredictionLog | None:
        return self.engine.predlog

    def refusals(self) -> Mapping[tuple[str, str], int]:
        counts: Mapping[tuple[str, str], int] | None = \
            getattr(self.engine.source, "refusals", None)
        return counts or {}

    def _snapshot(self, entry: VersionEntry, sampled: set[int]) -> ModelSnapshot:
        svc, pool = entry.service, entry.service.pool
        return ModelSnapshot(
            name=svc.name, version=svc.version, role=entry.role, digest=svc.bundle.digest,
            ready=svc.ready, queued_rows=pool.queued_rows, in_flight=pool.in_flight,
            restarts=pool.stats.restarts, last_failure=pool.stats.last_failure,
            workers=tuple(self._worker(w, sampled) for w in pool.workers),
            traffic=entry.traffic,
            drift=svc.drift.compute() if svc.drift is not None else None,
            drift_alerts=tuple(svc.drift_alerts),
            metrics=svc.metrics.snapshot() if svc.metrics is not None else None)

    def _worker(self, w: Worker | None, sampled: set[int]) -> WorkerState:
        if w is None:
            return WorkerState(None, None, "absent")
        sample = self.sampler.sample(w.pid) if w.pid and w.state == "ready" else None
        if w.pid is None or sample is None:
            return WorkerState(w.slot, w.pid, w.state)
        sampled.add(w.pid)
        return WorkerState(w.slot, w.pid, w.state, sample[0], int(sample[1]))
