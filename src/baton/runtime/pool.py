"""A pool of workers for one model: greedy batching, crash and hang recovery, draining.

Requests queue per model. Whenever a worker is free it takes everything queued, up to
``max_batch_rows`` rows and ``max_batch_bytes`` of arrays (a larger request goes alone), as
one batch: under load batches grow by themselves, and an idle model answers a single
request at once, with no timer (docs/protocol.md has the measurements). When a merged batch
fails inside the model (an exception, or the model exiting or faulting on one of its
inputs), its requests are retried one by one: one bad request never fails its neighbours.

Worker faults stay out of sight where that is safe. A model is a pure function of its
input, so the requests of a batch whose worker was killed from outside (not by its own exit
or fault) are queued again, each alone, and answered by another worker, once. While no
worker is ready, because the only one is restarting, requests wait in the queue for up to
``restart_wait`` seconds instead of failing at once. A batch that timed out is not retried:
the input may be what hangs the model. With ``workers=0`` the pool sizes itself: one
worker, and a second once the first one's memory shows that it fits
(:mod:`baton.runtime.sizing`). Workers are forked from the model's template where one
applies (:mod:`baton.runtime.template`): a restart costs the model's load only."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from baton import tracing as _tracing
from baton.backoff import Backoff
from baton.batch import Batch, concat_batches, split_batch
from baton.errors import (
    BatonError,
    ModelError,
    ModelNotReady,
    PayloadTooLarge,
    WorkerCrashed,
    WorkerError,
)
from baton.runtime import sizing
from baton.runtime.template import PoolTemplate
from baton.runtime.worker import Worker, WorkerSpec

log = logging.getLogger("baton.pool")


@dataclass(eq=False)
class _Item:
    batch: Batch
    future: asyncio.Future[Batch]
    solo: bool = False
    retried: bool = False  # already sent again once after its worker died
    #: Fails the request when no worker came back in time (armed while none is ready).
    expiry: asyncio.TimerHandle | None = None
    trace: _tracing.Trace | None = None  # when the request is traced (baton.tracing)


@dataclass
class PoolStats:
    restarts: int = 0
    batches: int = 0
    rows: int = 0
    #: Requests sent again after their worker died; failed after ``restart_wait`` unserved.
    retried: int = 0
    expired: int = 0
    last_failure: dict[str, Any] | None = None
    failures: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=20))


class WorkerPool:
    def __init__(self, spec: WorkerSpec, *, workers: int = 1, timeout: float = 30.0,
                 max_batch_rows: int = 256, max_batch_bytes: int = 8 << 20,
                 max_queue_rows: int = 65536,
                 backoff: tuple[float, float] = (0.2, 30.0),
                 restart_wait: float = 10.0, template: PoolTemplate | None = None) -> None:
        self.spec = spec
        #: ``workers=0``: sized by :func:`sizing.decide` once the first worker is up.
        self.auto = workers == 0
        workers = workers or 1
        self.size = workers
        self.sizing: dict[str, Any] = {"workers": workers, "decided_by": "setting"}
        self.timeout = timeout
        self.restart_wait = restart_wait
        self.max_batch_rows, self.max_batch_bytes = max_batch_rows, max_batch_bytes
        self.max_queue_rows, self.reserved_cpus = max_queue_rows, 0  # CPUs its caller uses
        self.backoff = backoff
        self.stats = PoolStats()
        self.workers: list[Worker | None] = [None] * workers
        self._idle: list[Worker] = []
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._busy = 0
        self._closing = False
        #: Per slot: how long to wait before its next restart (reset by a served batch).
        self._backoffs = [self._new_backoff() for _ in range(workers)]
        self._restarts: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()
        self._served = False  # a worker has been ready once: requests may wait for one
        self.load_error: BatonError | None = None
        #: Called with the row count of every batch sent to a worker (metrics).
        self.on_batch: Callable[[int], None] | None = None
        self.template = template or PoolTemplate(spec)  # given: started ahead, for spec

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; raise the first load error if none of them came up."""
        results = await asyncio.gather(*(self._start_slot(i) for i in range(self.size)),
                                       return_exceptions=True)
        started: list[Worker] = []
        errors: list[BaseException] = []
        for slot, result in enumerate(results):  # failed slots retry in the background
            if isinstance(result, BaseException):
                errors.append(result)
                self._schedule_restart(slot, result)
            else:
                started.append(result)
        if not started:
            err = errors[0]
            self.load_error = err if isinstance(err, BatonError) else WorkerError(str(err))
            raise self.load_error
        if self.auto:
            self._size_itself(started[0])

    def _new_backoff(self) -> Backoff:
        first, cap = self.backoff
        return Backoff(first, cap)

    def _size_itself(self, worker: Worker) -> None:
        """From the first worker: whether a second fits; if so, start it."""
        self.sizing = sizing.decide(worker.memory(), self.spec.threads, self.reserved_cpus)
        log.info("%s: %d worker(s): one uses %.0f MB, %.0f MB available, %d CPUs",
                 self.spec.model, self.sizing["workers"], self.sizing["worker_mb"],
                 self.sizing["available_mb"], self.sizing["cpus"])
        for slot in range(self.size, self.sizing["workers"]):
            self.workers.append(None)
            self._backoffs.append(self._new_backoff())
            self.size += 1
            self._spawn(slot, 0.0)

    async def _start_slot(self, slot: int) -> Worker:
        worker = Worker(self.spec, slot, self.template.get(self.workers[slot] is not None))
        self.workers[slot] = worker
        await worker.start()
        asyncio.get_running_loop().create_task(self._watch(worker))
        self.load_error = None
        self._served = True
        for item in self._queue:  # a worker is back: what waits for it no longer expires
            self._disarm(item)
        self._idle.append(worker)
        self._dispatch()
        return worker

    async def _watch(self, worker: Worker) -> None:
        await worker.exited.wait()
        if worker in self._idle:
            self._idle.remove(worker)
        if self._closing:
            return
        self.stats.restarts += 1
        self._record_failure(worker.slot, f"worker {worker.pid} {worker.exit_reason}")
        if not self.ready:  # what is queued waits for a restart, up to restart_wait
            for item in self._queue:
                self._arm_expiry(item)
        self._schedule_restart(worker.slot, None)

    def _schedule_restart(self, slot: int, err: BaseException | None) -> None:
        if err is not None:
            self._record_failure(slot, str(err))
        backoff = self._backoffs[slot]  # a slot's first restart, forked, waits for nothing
        fresh = backoff.base == backoff.first and self.template.enabled
        self._spawn(slot, backoff.next() * (not fresh))

    def _spawn(self, slot: int, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._restart(slot, delay))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closing:
            return
        if self.workers[slot] is not None:
            log.warning("%s: restarting worker slot %d after %.1fs", self.spec.model, slot, delay)
        try:
            await self._start_slot(slot)
        except BatonError as exc:
            self.load_error = exc if not self.ready else None
            if not self._closing:
                self._schedule_restart(slot, exc)

    def _record_failure(self, slot: int, reason: str) -> None:
        event = {"time": time.time(), "slot": slot, "reason": reason}
        self.stats.last_failure = event
        self.stats.failures.append(event)
        log.warning("%s: worker slot %d failed: %s", self.spec.model, slot, reason)

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, let queued and in-flight work finish, stop the workers."""
        self._closing = True
        restarts = list(self._restarts)
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)  # a starting worker: killed
        if self._queue or self._busy:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                log.warning("%s: drain timed out after %.0fs", self.spec.model, drain_timeout)
        self._fail_queue(ModelNotReady(f"{self.spec.model} is shutting down"))
        await asyncio.gather(*(w.stop() for w in self.workers if w is not None))
        await self.template.close()  # it kills whatever of its workers is left

    # -- state -------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        return self._busy

    @property
    def ready(self) -> bool:
        return any(w is not None and w.state == "ready" for w in self.workers)

    def describe(self) -> dict[str, Any]:
        return {
            "workers": [{"slot": i, "pid": w.pid if w else None,
                         "state": w.state if w else "absent",
                         "in_flight": w.in_flight if w else 0}
                        for i, w in enumerate(self.workers)],
            "sizing": self.sizing,
            "template": self.template.describe(),
            "timeout": self.timeout,
            "restarts": self.stats.restarts,
            "retried_requests": self.stats.retried,
            "expired_requests": self.stats.expired,
            "queued_rows": self._queued_rows,
            "last_failure": self.stats.last_failure,
        }

    # -- requests ----------------------------------------------------------------------
    async def predict(self, batch: Batch) -> Batch:
        if self._closing:
            raise ModelNotReady(f"{self.spec.model} is shutting down")
        if not self.ready and not (self._served and self.restart_wait > 0):
            why = f": {self.load_error.message}" if self.load_error else ""
            raise ModelNotReady(f"{self.spec.model} is not ready{why}")
        if batch.rows > self.max_queue_rows:
            raise PayloadTooLarge(f"{self.spec.model}: a request of {batch.rows} rows exceeds "
                                  f"the {self.max_queue_rows} rows a model queues; split it",
                                  details={"rows": batch.rows, "limit": self.max_queue_rows})
        if self._queued_rows + batch.rows > self.max_queue_rows:
            raise ModelNotReady(f"{self.spec.model}: queue is full "
                                f"({self._queued_rows} rows waiting)", code="QUEUE_FULL")
        fut: asyncio.Future[Batch] = asyncio.get_running_loop().create_future()
        trace = _tracing.CURRENT.get() if _tracing.ACTIVE is not None else None
        self._enqueue(_Item(batch, fut, trace=trace))
        self._dispatch()
        return await fut

    def _enqueue(self, item: _Item, front: bool = False) -> None:
        if front:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        self._queued_rows += item.batch.rows
        if not self.ready:
            self._arm_expiry(item)

    def _arm_expiry(self, item: _Item) -> None:
        if item.expiry is None:
            item.expiry = asyncio.get_running_loop().call_later(
                self.restart_wait, self._expire, item)

    @staticmethod
    def _disarm(item: _Item) -> None:
        if item.expiry is not None:
            item.expiry.cancel()
            item.expiry = None

    def _expire(self, item: _Item) -> None:
        """No worker came back within ``restart_wait``: fail the request, if still queued."""
        try:
            self._queue.remove(item)
        except ValueError:
            return
        self._queued_rows -= item.batch.rows
        self.stats.expired += 1
        if not self._queue and not self._busy:
            self._drained.set()
        if not item.future.done():
            last = self.stats.last_failure
            item.future.set_exception(ModelNotReady(
                f"{self.spec.model}: no worker was available within {self.restart_wait:g}s"
                + (f" (restarting after: {last['reason']})" if last else ""),
                code="WORKER_UNAVAILABLE", details={"waited_seconds": self.restart_wait}))

    async def metrics(self, functions: list[str], y_true: list[Any], y_pred: list[Any],
                      outputs: list[Any]) -> dict[str, Any]:
        """Run the bundle's metric functions in one of its workers (its own environment)."""
        ready = [w for w in self.workers if w is not None and w.state == "ready"]
        if not ready:
            raise ModelNotReady(f"{self.spec.model} has no worker to compute metrics")
        worker = min(ready, key=lambda w: w.in_flight)
        result: dict[str, Any] = await worker.metrics(functions, y_true, y_pred, outputs,
                                                      self.timeout)
        return result

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            worker = self._idle.pop()
            if worker.state != "ready":
                continue
            items = [self._queue.popleft()]
            rows, size = items[0].batch.rows, items[0].batch.nbytes()
            while self._queue and not items[0].solo and not self._queue[0].solo:
                nxt = self._queue[0].batch
                grown = (rows + nxt.rows, size + nxt.nbytes())
                if grown[0] > self.max_batch_rows or grown[1] > self.max_batch_bytes:
                    break
                items.append(self._queue.popleft())
                rows, size = grown
            self._queued_rows -= rows
            for it in items:
                self._disarm(it)
            live = [it for it in items if not it.future.done()]  # callers may have left
            if not live:
                self._idle.append(worker)
                continue
            self._busy += 1
            merged = concat_batches([it.batch for it in live])
            if self.on_batch is not None:
                self.on_batch(merged.rows)
            fut = worker.predict(merged, self.timeout)
            if _tracing.ACTIVE is not None:  # its callback runs before _done's
                _tracing.dispatched([it.trace for it in live], worker, merged.rows, fut)
            fut.add_done_callback(functools.partial(self._done, worker, live))

    def _done(self, worker: Worker, items: list[_Item], fut: asyncio.Future[Batch]) -> None:
        self._busy -= 1
        if worker.state == "ready":
            self._idle.append(worker)
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            self.stats.batches += 1
            self.stats.rows += result.rows
            self._backoffs[worker.slot].reset()
            parts = split_batch(result, [it.batch.rows for it in items])
            for it, part in zip(items, parts, strict=True):
                if not it.future.done():
                    it.future.set_result(part)
        elif isinstance(exc, WorkerCrashed) and self._may_retry(worker, items):
            self._again_alone(items, retried=True)  # answered nowhere: once more
        elif len(items) > 1 and (isinstance(exc, ModelError) or
                                 isinstance(exc, WorkerCrashed) and not self._closing):
            # One of several merged requests failed it, which one is unknown: each again alone.
            self._again_alone(items)
        else:
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
        self._dispatch()
        if not self._queue and not self._busy:
            self._drained.set()

    def _again_alone(self, items: list[_Item], *, retried: bool = False) -> None:
        """Queue a failed batch's requests again at the front, in order, each alone;
        ``retried``: after their worker died, which counts and happens once only."""
        for it in reversed(items):
            it.solo = True
            if retried:
                it.retried = True
                self.stats.retried += 1
            self._enqueue(it, front=True)

    def _may_retry(self, worker: Worker, items: list[_Item]) -> bool:
        """A batch whose worker died is sent again when the death cannot be the batch's
        doing: the batch never reached the worker (no exit seen yet), or a signal from
        outside killed it. A model that exits or faults on an input is not given a second
        worker to kill; neither is a request that was retried already."""
        outside = worker.returncode is None or worker.killed_from_outside
        return outside and not self._closing and not any(it.retried for it in items)

    def _fail_queue(self, exc: Exception) -> None:
        while self._queue:
            it = self._queue.popleft()
            self._disarm(it)
            if not it.future.done():
                it.future.set_exception(exc)
        self._queued_rows = 0
