"""Traffic between two versions of one model: a weighted canary, or a shadow.

Canary: a share of the requests goes to the candidate version, the rest to the live one;
callers see which answered in ``model_version``. Shadow: the live version answers every
request; a copy goes to the candidate, whose outputs are recorded and compared with the
live ones and never returned. Shadow work is bounded and can never slow or fail a caller.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from baton.batch import Batch
from baton.errors import BatonError

if TYPE_CHECKING:
    from baton.serving.model import ModelService

log = logging.getLogger("baton.traffic")


@dataclass
class Canary:
    """Send ``weight`` (0..1) of the unversioned requests to ``candidate``."""

    candidate: ModelService
    weight: float
    rng: random.Random = field(default_factory=random.Random)
    sent: int = 0
    total: int = 0

    def choose(self, live: ModelService) -> ModelService:
        self.total += 1
        if self.candidate.ready and self.rng.random() < self.weight:
            self.sent += 1
            return self.candidate
        return live

    def describe(self) -> dict[str, Any]:
        return {"mode": "canary", "candidate": self.candidate.version,
                "candidate_digest": self.candidate.bundle.digest,
                "candidate_ready": self.candidate.ready, "weight": self.weight,
                "requests": self.total, "to_candidate": self.sent}


@dataclass
class ShadowStats:
    requests: int = 0
    compared_rows: int = 0
    mismatched_rows: int = 0
    max_abs_diff: float = 0.0
    candidate_errors: int = 0
    skipped: int = 0
    recent: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=50))


class Shadow:
    """Mirror each live batch to ``candidate`` and compare; at most ``max_in_flight`` at once."""

    def __init__(self, candidate: ModelService, *, tolerance: float = 1e-6,
                 max_in_flight: int = 64) -> None:
        self.candidate = candidate
        self.tolerance = tolerance
        self.max_in_flight = max_in_flight
        self.stats = ShadowStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, batch: Batch, live: Batch) -> None:
        if len(self._tasks) >= self.max_in_flight or not self.candidate.ready:
            self.stats.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self._compare(batch, live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(self, batch: Batch, live: Batch) -> None:
        self.stats.requests += 1
        try:
            shadow = await self.candidate.predict(batch)
        except BatonError as exc:
            self.stats.candidate_errors += 1
            self._record({"rows": batch.rows, "error": exc.code, "message": exc.message})
            return
        except Exception as exc:  # never let a candidate disturb the live path
            self.stats.candidate_errors += 1
            self._record({"rows": batch.rows, "error": type(exc).__name__,
                          "message": str(exc)})
            return
        if self.candidate.drift is not None:  # its inputs drift as the live ones do
            self.candidate.drift.observe(batch)
        mismatched, max_diff = compare_batches(live, shadow, self.tolerance)
        self.stats.compared_rows += batch.rows
        self.stats.mismatched_rows += mismatched
        self.stats.max_abs_diff = max(self.stats.max_abs_diff, max_diff)
        self._record({"rows": batch.rows, "mismatched_rows": mismatched,
                      "max_abs_diff": max_diff})

    def _record(self, event: dict[str, Any]) -> None:
        event["time"] = time.time()
        self.stats.recent.append(event)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {"mode": "shadow", "candidate": self.candidate.version,
                "candidate_digest": self.candidate.bundle.digest,
                "candidate_ready": self.candidate.ready, "requests": s.requests,
                "compared_rows": s.compared_rows, "mismatched_rows": s.mismatched_rows,
                "max_abs_diff": s.max_abs_diff, "candidate_errors": s.candidate_errors,
                "skipped": s.skipped, "recent": list(s.recent)[-10:]}


def compare_batches(live: Batch, shadow: Batch, tol: float) -> tuple[int, float]:
    """Rows whose outputs differ (numbers beyond ``tol``, anything else unequal), max diff."""
    bad = np.zeros(live.rows, dtype=bool)
    max_diff = 0.0
    for name, col in live.columns.items():
        other = shadow.columns.get(name)
        if other is None:
            return live.rows, math.inf
        a, b = _numeric(col), _numeric(other)
        if a is not None and b is not None and a.shape == b.shape:
            diff = np.abs(a - b)
            rows = diff.reshape(live.rows, -1).max(axis=1) if diff.size else diff
            max_diff = max(max_diff, float(np.nanmax(rows)) if rows.size else 0.0)
            bad |= rows > tol
        else:
            la = col.tolist() if isinstance(col, np.ndarray) else col
            lb = other.tolist() if isinstance(other, np.ndarray) else other
            bad |= np.array([x != y for x, y in zip(la, lb, strict=False)] +
                            [True] * (live.rows - min(len(la), len(lb))), dtype=bool)[:live.rows]
    return int(bad.sum()), max_diff


def _numeric(col: Any) -> np.ndarray | None:
    """A column as float64, if it holds numbers (runners without numpy send lists)."""
    if isinstance(col, np.ndarray):
        return col.astype(np.float64) if col.dtype.kind in "fiub" else None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in col):
        return np.asarray(col, dtype=np.float64)
    return None
