"""The prediction log's writer: drains the buffer into the store, from a thread.

A background task (:meth:`PredictionWriter.run`) writes what is queued every ``interval``
seconds and prunes what is older than the retention every minute. A write that fails
keeps its batches (within the buffer's bound) and is retried with a jittered backoff
(:class:`baton.backoff.Backoff`, ``interval`` doubling to 10 s), said once in the log.
New batches are handed to the export once, when first taken; a retried write is not
exported again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from baton.backoff import Backoff
from baton.monitor.predlog.buffer import PredictionBuffer
from baton.monitor.predlog.records import Pending, PredictionStore, first_line

if TYPE_CHECKING:
    from baton.monitor.export import PredictionExport

log = logging.getLogger("baton.predlog")

#: Longest wait between two tries of a store that keeps failing.
MAX_RETRY_DELAY = 10.0
#: Seconds between two prunes.
PRUNE_EVERY = 60.0


class PredictionWriter:
    """Writes ``buffer``'s batches to ``store`` (and offers new ones to ``export``)."""

    def __init__(self, buffer: PredictionBuffer, store: PredictionStore, *,
                 retention: float, export: PredictionExport | None = None) -> None:
        self.buffer = buffer
        self.store = store
        self.retention = retention
        self.export = export
        #: Rows written to the store; failed writes (retried) and the latest error.
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self._flushing = asyncio.Lock()

    async def run(self, interval: float = 0.5) -> None:
        """Write every ``interval`` seconds and prune every minute, until cancelled."""
        backoff = Backoff(interval, max(interval, MAX_RETRY_DELAY))
        last_prune = 0.0
        failing = False
        while True:
            await asyncio.sleep(backoff.next() if failing else interval)
            try:
                await self.flush()
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    await asyncio.to_thread(self.prune)
                    last_prune = time.monotonic()
            except Exception as exc:
                if not failing:
                    log.warning("prediction log: cannot write to the %s store (%s); "
                                "retrying, %d batches queued", self.store.kind,
                                first_line(exc), self.buffer.queued)
                failing = True
                continue
            if failing:
                log.info("prediction log: writing to the %s store again", self.store.kind)
                failing = False
                backoff.reset()

    async def flush(self) -> None:
        """Write what is queued, from a thread (the event loop never waits on the store).
        Flushes run one at a time: a flush returns only once what was queued before it,
        including what a concurrent flush took, is written (feedback relies on it)."""
        async with self._flushing:
            if self.buffer.has_work():
                items = self._take()
                try:
                    await asyncio.to_thread(self.store.write, items)
                except Exception as exc:
                    self._failed(items, exc)
                    raise
                self.written += sum(item.inputs.rows for item in items)

    def flush_now(self) -> None:
        """Write what is queued, in the caller's thread (tools and tests)."""
        if self.buffer.has_work():
            items = self._take()
            try:
                self.store.write(items)
            except Exception as exc:
                self._failed(items, exc)
                raise
            self.written += sum(item.inputs.rows for item in items)

    def prune(self) -> None:
        """Delete what is older than the retention (blocking)."""
        self.store.prune(time.time() - self.retention)

    def _take(self) -> list[Pending]:
        """Batches of a failed write first, then the new ones, which are handed to the
        export here, once (it encodes and writes them in its own thread)."""
        retried, new = self.buffer.take()
        if new and self.export is not None:
            self.export.offer(new)
        return retried + new

    def _failed(self, items: list[Pending], exc: Exception) -> None:
        self.failures += 1
        self.last_error = first_line(exc)
        self.buffer.give_back(items)
