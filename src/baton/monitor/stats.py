"""``GET /v1/stats``: live figures per served version, rendered from the same snapshots as
``/metrics`` (:class:`baton.monitor.state.Observable`)."""

from __future__ import annotations

import time
from typing import Any

from baton.monitor.state import ModelSnapshot, Observable, WorkerState


def render_stats(source: Observable) -> dict[str, Any]:
    """Traffic, errors by stage, latency, workers and resources of every served version
    (each model's live version first, then its canary and shadow candidates), and the
    stream bindings and the prediction log's figures (None when it is off)."""
    predlog = source.prediction_log()
    return {"time": time.time(),
            "models": [version_stats(s) for s in source.snapshots()],
            "streams": source.stream_states(),
            "prediction_log": predlog.describe() if predlog is not None else None}


def version_stats(snap: ModelSnapshot) -> dict[str, Any]:
    """One served version's entry: ``role`` is live, canary or shadow; ``traffic`` the
    canary split or shadow comparison it takes part in, if any."""
    return {"name": snap.name, "version": snap.version, "role": snap.role,
            "ready": snap.ready, "digest": snap.digest, "queued_rows": snap.queued_rows,
            "in_flight": snap.in_flight, "restarts": snap.restarts,
            "last_failure": snap.last_failure,
            "workers": [_worker(w) for w in snap.workers],
            "traffic": snap.traffic, "metrics": snap.metrics, "drift": snap.drift,
            "drift_alerts": list(snap.drift_alerts)}


def _worker(w: WorkerState) -> dict[str, Any]:
    entry: dict[str, Any] = {"slot": w.slot, "pid": w.pid, "state": w.state}
    if w.cpu_seconds is not None and w.rss_bytes is not None:
        entry["cpu_seconds"], entry["rss_bytes"] = w.cpu_seconds, w.rss_bytes
    return entry
