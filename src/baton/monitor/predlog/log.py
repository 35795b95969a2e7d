"""The prediction log as the engine sees it: the buffer (the hot path, inherited as it
is), a writer that drains it into a store, and an optional export."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.monitor.predlog.buffer import PredictionBuffer
from baton.monitor.predlog.records import FeedbackResult, PredictionStore, first_line
from baton.monitor.predlog.writer import PredictionWriter

if TYPE_CHECKING:
    from baton.monitor.export import PredictionExport

log = logging.getLogger("baton.predlog")


class PredictionLog(PredictionBuffer):
    """``store`` is a :class:`PredictionStore`, or the path of a local SQLite file.

    Serving calls :meth:`log` (the buffer's, no I/O; tools and tests may :meth:`record`
    under ids of their own); the engine runs :meth:`run` in the background; feedback calls
    :meth:`flush`, :meth:`add_labels` and :meth:`labelled`."""

    def __init__(self, store: PredictionStore | Path | str, *, sample: float = 1.0,
                 retention_days: float = 7.0, max_pending: int = 100_000,
                 export: PredictionExport | None = None) -> None:
        super().__init__(sample=sample, max_pending=max_pending)
        if isinstance(store, str | os.PathLike):
            from baton.monitor.predlog.store import DatabaseStore  # SQLAlchemy: off the hot path

            store = DatabaseStore.local(Path(store))
        self.store: PredictionStore = store
        self.export = export
        self.writer = PredictionWriter(self, store, retention=retention_days * 86400,
                                       export=export)
        self._opened = False

    @property
    def retention(self) -> float:
        """Seconds a logged prediction and its label are kept."""
        return self.writer.retention

    @property
    def written(self) -> int:
        """Rows written to the store."""
        return self.writer.written

    @property
    def failures(self) -> int:
        """Background writes that failed (their batches are queued again)."""
        return self.writer.failures

    @property
    def last_error(self) -> str | None:
        return self.writer.last_error

    def open(self) -> None:
        """Open the store (and start the export). Idempotent: ``baton serve`` opens the log
        before the server starts, so a store it cannot reach stops it at once."""
        if self._opened:
            return
        self.store.open()
        if self.export is not None:
            self.export.start()
        self._opened = True
        where = self.store.describe()
        log.info("prediction log: %s store (%s), %g%% of batches, kept %g days%s",
                 self.store.kind, where.get("path") or where.get("database"),
                 self.sample * 100, self.retention / 86400,
                 f", exported to {self.export.sink}" if self.export is not None else "")

    def describe(self) -> dict[str, Any]:
        """Where predictions go and how that is going (``/v1/stats``, the startup log)."""
        return {**self.store.describe(), "sample": self.sample,
                "retention_days": self.retention / 86400, "written": self.written,
                "dropped": self.dropped, "pending": self.queued,
                "failures": self.failures, "last_error": self.last_error,
                "export": self.export.describe() if self.export is not None else None}

    # -- the writer ----------------------------------------------------------------------
    async def run(self, interval: float = 0.5) -> None:
        """Write every ``interval`` seconds and prune every minute (the engine's
        background task); a store that fails is retried with backoff."""
        await self.writer.run(interval)

    async def flush(self) -> None:
        """Write what is queued, from a thread; returns once everything queued before the
        call is written (feedback relies on it)."""
        await self.writer.flush()

    def flush_now(self) -> None:
        """Write what is queued, in the caller's thread (tools and tests)."""
        self.writer.flush_now()

    def _prune(self) -> None:
        self.writer.prune()

    # -- feedback ------------------------------------------------------------------------
    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Attach true values to logged predictions of ``model``; each prediction at most
        once. An id is a prediction id, or a stream record's key (its latest prediction)."""
        return self.store.add_labels(model, labels)

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""
        return self.store.labelled(model, version, window)

    def close(self) -> None:
        """Stop the export (it writes what it holds, for a few seconds at most), then close
        the store. Blocking: the engine calls it from a thread."""
        if self.export is not None:
            self.export.close()
        self.store.close()
        self._opened = False

    async def aclose(self) -> None:
        """Write what is queued and close, never raising (the engine is shutting down)."""
        try:
            await self.flush()
        except Exception as exc:
            log.warning("prediction log: %d batches not written at shutdown: %s",
                        self.queued, first_line(exc))
        try:
            await asyncio.to_thread(self.close)
        except Exception as exc:
            log.warning("prediction log: closing the %s store failed: %s", self.store.kind,
                        first_line(exc))
