"""A copy of every logged prediction, for the data team's own tools
(``BATON_PREDICTION_LOG_SINK``).

The sink is any stream destination :func:`baton.streams.base.open_sink` accepts
(``file://PATH.jsonl``, ``redis://HOST:PORT/STREAM``, ``kafka://...``, ...), written with
that connector. Each prediction is one JSON record::

    {"id": "5f0c2a9e1d7b4c38-0", "model": "penguins", "version": "1.0.0",
     "time": 1795701756.08, "key": "order-17", "input": {...}, "output": {...}}

(``key`` only for stream records that have one), with the prediction id as the record's key.

Serving never waits for it: the prediction log hands over what it takes from its queue
(:meth:`PredictionExport.offer`, a few appends), and a thread of its own, with its own
event loop, encodes and writes batches of up to 1,000 records. When the sink fails, the
batch is retried on a fresh connection with jittered exponential backoff (up to 0.5 s,
doubling to 30 s); meanwhile records wait in a buffer of at most 100,000, and beyond it
new ones are dropped:
counted (``dropped``, ``baton_prediction_log_export_dropped_total``) and said in the log.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from baton.backoff import Backoff
from baton.batch import Batch
from baton.monitor.predlog import Pending
from baton.streams.base import OutRecord, Sink, check_url, open_sink, redact_url

log = logging.getLogger("baton.predlog")

_NP = orjson.OPT_SERIALIZE_NUMPY


def export_records(item: Pending) -> list[OutRecord]:
    """One scored batch as one JSON record per prediction, keyed by prediction id."""
    model, version, now, rid, keys, inputs, outputs, _ = item
    ins, outs = _rows(inputs), _rows(outputs)
    records = []
    for i in range(inputs.rows):
        pid = f"{rid}-{i}"
        record: dict[str, Any] = {"id": pid, "model": model, "version": version, "time": now}
        if keys is not None and keys[i] is not None:
            record["key"] = keys[i]
        record["input"] = ins[i]
        record["output"] = outs[i]
        records.append(OutRecord(pid, orjson.dumps(record, option=_NP)))
    return records


def _rows(batch: Batch) -> list[dict[str, Any]]:
    return batch.to_records() if batch.columns else [{} for _ in range(batch.rows)]


class PredictionExport:
    """Writes logged predictions to a stream sink from its own thread; never blocks."""

    def __init__(self, url: str, *, max_records: int = 100_000, batch_records: int = 1000,
                 first_backoff: float = 0.5, max_backoff: float = 30.0,
                 drain_timeout: float = 5.0) -> None:
        check_url(url, setting="prediction_log_sink")  # a library caller's settings too
        self.url = url
        self.sink = redact_url(url)
        self.max_records = max_records
        self.batch_records = batch_records
        self.first_backoff, self.max_backoff = first_backoff, max_backoff
        self.drain_timeout = drain_timeout
        #: Records written to the sink, records dropped, sink failures and the latest one.
        self.exported = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._queue: collections.deque[Pending] = collections.deque()
        self._buffered = 0  # records queued, plus those of the batch being written
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._last_drop_log = -float("inf")

    def describe(self) -> dict[str, Any]:
        return {"sink": self.sink, "exported": self.exported, "dropped": self.dropped,
                "pending": self._buffered, "failures": self.failures,
                "last_error": self.last_error}

    @property
    def pending(self) -> int:
        return self._buffered

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()  # started again after a close
        self._deadline = float("inf")
        self._started.clear()
        self._thread = threading.Thread(target=self._main, name="baton-prediction-export",
                                        daemon=True)
        self._thread.start()
        self._started.wait(10)

    def offer(self, items: Sequence[Pending]) -> None:
        """Take scored batches to export (from the prediction log, on the event loop)."""
        dropped = 0
        with self._lock:
            for item in items:
                rows = item[5].rows
                if self._buffered + rows > self.max_records:
                    dropped += rows
                    continue
                self._queue.append(item)
                self._buffered += rows
        if dropped:
            self._drop(dropped, f"the buffer of {self.max_records} records is full")
        self._notify()

    def close(self, timeout: float | None = None) -> None:
        """Write what is buffered (for ``drain_timeout`` seconds at most: what the sink has
        not taken by then is dropped and counted), then stop the thread."""
        if self._thread is None:
            return
        wait = self.drain_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + wait
        self._stopping.set()
        self._notify(stopping=True)
        self._thread.join(wait + 5)
        if self._thread.is_alive():
            log.warning("prediction export to %s did not stop within %.0fs", self.sink,
                        wait + 5)
        self._thread = None

    # -- the export thread ---------------------------------------------------------------
    def _notify(self, stopping: bool = False) -> None:
        loop, wake, stop = self._loop, self._wake, self._stop
        if loop is not None and wake is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
                if stopping:
                    loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the thread's loop is already closed
                pass

    def _drop(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= 60:  # one line a minute at most
            self._last_drop_log = now
            log.warning("prediction export to %s: %d records dropped (%s); %d dropped so far",
                        self.sink, n, why, self.dropped)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run())
        except Exception:
            log.exception("prediction export to %s stopped", self.sink)
        finally:
            loop.close()

    def _next_batch(self) -> list[OutRecord]:
        records: list[OutRecord] = []
        while len(records) < self.batch_records:
            with self._lock:
                if not self._queue:
                    break
                item = self._queue.popleft()
            try:
                records.extend(export_records(item))
            except Exception as exc:  # never the thread's end: count it and go on
                with self._lock:
                    self._buffered -= item[5].rows
                self._drop(item[5].rows, f"cannot encode them: {exc}")
        return records

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        self._stop = stop = asyncio.Event()
        if self._stopping.is_set():
            stop.set()
        self._started.set()
        sink: Sink | None = None
        batch: list[OutRecord] = []
        backoff = Backoff(self.first_backoff, self.max_backoff)
        failing = False
        while True:
            if not batch:
                wake.clear()
                batch = self._next_batch()
            if not batch:
                if self._stopping.is_set():
                    break
                await wake.wait()  # offer() or close()
                continue
            try:
                if sink is None:
                    sink = open_sink(self.url)
                    await sink.open()
                await sink.write(batch)
            except Exception as exc:  # a client may raise outside its documented errors
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.failures += 1
                self.last_error = message
                if not failing:
                    log.warning("prediction export to %s failed (retrying, %d records "
                                "buffered): %s", self.sink, self._buffered, message)
                failing = True
                await _close(sink)
                sink = None
                left = self._deadline - time.monotonic()
                if self._stopping.is_set() and left <= 0:
                    self._give_up()
                    break
                await _pause(min(backoff.next(), left), stop)
                continue
            with self._lock:
                self._buffered -= len(batch)
                self.exported += len(batch)
            batch = []
            backoff.reset()
            if failing:
                log.info("prediction export to %s: writing again", self.sink)
                failing = False
            if self._stopping.is_set() and time.monotonic() > self._deadline:
                self._give_up()
                break
        await _close(sink)

    def _give_up(self) -> None:
        with self._lock:
            lost = self._buffered
            self._queue.clear()
            self._buffered = 0
        if lost:
            self._drop(lost, "the engine stopped before the sink took them")


async def _pause(seconds: float, stop: asyncio.Event) -> None:
    """Wait ``seconds``, or until a stop is asked (to retry once more before giving up)."""
    if stop.is_set():
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _close(sink: Sink | None) -> None:
    if sink is None:
        return
    try:
        await sink.close()
    except Exception as exc:
        log.debug("closing the prediction export sink failed: %s", exc)
