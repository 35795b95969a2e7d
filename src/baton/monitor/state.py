"""What monitoring reads: a model version's observable state, as plain frozen data.

Monitoring sits below serving and never imports it. Serving implements
:class:`Observable` (``baton.serving.observe``); ``/metrics`` (:mod:`baton.monitor.metrics`)
and ``/v1/stats`` (:mod:`baton.monitor.stats`) are both rendered from the snapshots it
returns, so the two always describe the same versions, workers and samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from baton.monitor.predlog import PredictionLog


@dataclass(frozen=True)
class WorkerState:
    """One worker slot of a version's pool; CPU and memory only for a ready worker."""

    slot: int | None
    pid: int | None
    #: ``starting``, ``ready``, ``stopped``, ... or ``absent`` for an empty slot.
    state: str
    cpu_seconds: float | None = None
    rss_bytes: int | None = None


@dataclass(frozen=True)
class ModelSnapshot:
    """One version taking traffic, read at one moment."""

    name: str
    version: str
    #: ``live``, ``canary`` or ``shadow``.
    role: str
    digest: str
    ready: bool
    queued_rows: int
    in_flight: int
    restarts: int
    last_failure: Mapping[str, Any] | None
    workers: tuple[WorkerState, ...]
    #: The canary split or shadow comparison the version takes part in, if any.
    traffic: Mapping[str, Any] | None
    #: Per-feature drift figures (:meth:`DriftMonitor.compute`); None without a reference.
    drift: Mapping[str, Mapping[str, Any]] | None
    drift_alerts: tuple[Mapping[str, Any], ...]
    #: :meth:`ModelMetrics.snapshot`; None when metrics are off.
    metrics: Mapping[str, Any] | None

    @property
    def workers_alive(self) -> int:
        return sum(1 for w in self.workers if w.state == "ready")


class Observable(Protocol):
    """An engine as monitoring sees it."""

    def snapshots(self) -> list[ModelSnapshot]:
        """Every version taking traffic: per model the live one, then its canary and shadow
        candidates (a candidate whose model has no live version is still listed)."""

    def stream_states(self) -> list[dict[str, Any]]:
        """Each stream binding's ``describe()``."""

    def prediction_log(self) -> PredictionLog | None:
        """The prediction log, or None when it is off."""

    def refusals(self) -> Mapping[tuple[str, str], int]:
        """Registry versions refused, counted by ``(model, code)`` (empty when the engine
        follows no registry)."""
