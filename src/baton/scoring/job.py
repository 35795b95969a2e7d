"""A scoring job: a file in, scores and dead letters out, through a model's worker pool.

Three stages overlap: a thread reads and checks the next chunk; up to one chunk per worker
is in the model; a thread writes finished chunks in input order. The reading stage never
runs more than one chunk ahead, and finished chunks wait for the writer in a short queue,
so memory stays bounded whatever the file's size.

A chunk the model fails on (an exception, a crash, an output that breaks the contract) is
split in halves, recursively, until the rows that fail are alone: they become dead letters
with stage ``model`` or ``output_contract``, and their neighbours are scored.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from baton.batch import Batch, concat_batches
from baton.contract.spec import Contract
from baton.errors import BatonError, ContractViolation, ModelError, ModelNotReady, WorkerError
from baton.runtime.worker import peak_rss
from baton.scoring.base import ROW_COLUMN, Chunk, DeadRow, ScoringError
from baton.scoring.columns import NULL_TOKENS
from baton.scoring.readers import InputReader, open_input
from baton.scoring.writers import DeadLetterWriter, OutputWriter

if TYPE_CHECKING:
    from baton.runtime.pool import WorkerPool

#: Seconds the job waits for a model with no worker ready before it gives up.
NOT_READY_LIMIT = 120.0
#: Rows that fail in the model, with none ever scored, after which the job stops: a model
#: that fails on every row is broken, and isolating each row of a large file would take hours.
GIVE_UP_AFTER = 16
#: Input values per chunk when the chunk size is not given, in bytes (8 per value): small
#: enough that the few chunks alive at once stay far below a model's own memory, big
#: enough that per-chunk costs vanish (measured: 26k rows of 20 floats run as fast as 50k
#: with 45 MB less peak memory).
CHUNK_BYTES = 4 << 20


def default_chunk_rows(contract: Contract) -> int:
    return max(1_000, min(100_000, CHUNK_BYTES // (8 * len(contract.inputs))))


@dataclass(frozen=True)
class ScoreSpec:
    """What to score and where the results go."""

    input: Path
    output: Path
    dead_letter: Path
    input_format: str
    output_format: str
    #: Input column copied to the output so scores join back; None: the row number.
    id_column: str | None = None
    #: Rows a chunk holds; None: about ``CHUNK_BYTES`` of input values.
    chunk_rows: int | None = None
    #: Seconds a worker may spend on one chunk; None: the bundle's per-batch timeout scaled
    #: by how many of its batches (``max_batch_rows``) a chunk holds.
    timeout: float | None = None
    #: Cell texts read as a missing value (CSV: unquoted cells; the empty cell always is).
    null_values: tuple[str, ...] = NULL_TOKENS


@dataclass
class ScoreSummary:
    rows_in: int = 0
    scored: int = 0
    dead_lettered: int = 0
    dead_by_stage: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    scoring_seconds: float = 0.0
    rows_per_s: float = 0.0
    steady_rows_per_s: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    chunk_rows: int = 0
    model: dict[str, str] = field(default_factory=dict)
    input: str = ""
    output: str = ""
    dead_letter: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    rows: int
    bytes_done: int
    total_bytes: int
    scored: int
    dead_lettered: int
    #: Seconds since the workers were ready.
    seconds: float


@dataclass
class _Scored:
    chunk: Chunk
    parts: list[tuple[int, Batch]]
    failed: list[tuple[int, str, BatonError]]


class ScoringModel(Protocol):
    """The model a job scores with (serving's ModelService is one): its pool, sized and
    started by the job, and the checked request path."""

    @property
    def pool(self) -> WorkerPool: ...

    async def predict(self, batch: Batch) -> Batch: ...


class _Files(NamedTuple):
    """What :meth:`ScoreJob.open` opened."""

    reader: InputReader
    output: OutputWriter
    dead: DeadLetterWriter


class ScoreJob:
    def __init__(self, spec: ScoreSpec, contract: Contract) -> None:
        if contract.kind != "records":
            raise ScoringError("batch scoring reads tables: this model has a tensor contract "
                               "(score it through /v2/models/NAME/infer instead)",
                               code="UNSUPPORTED_CONTRACT")
        id_name = spec.id_column or ROW_COLUMN
        if id_name in contract.output_names:
            raise ScoringError(f"the id column {id_name!r} clashes with a model output of that "
                               "name: choose another with --id-column",
                               code="INVALID_SETTING")
        self.spec = spec
        self.contract = contract
        self.chunk_rows = spec.chunk_rows or default_chunk_rows(contract)
        self.summary = ScoreSummary(chunk_rows=self.chunk_rows, input=str(spec.input),
                                    output=str(spec.output), dead_letter=str(spec.dead_letter))
        self.reader: InputReader | None = None
        self.output: OutputWriter | None = None
        self.dead: DeadLetterWriter | None = None
        self._bytes_done = 0
        self._ready_at = 0.0
        self._model_worked = False

    def open(self, model: dict[str, str]) -> None:
        """Open the input and create the outputs: fails fast, before any worker starts."""
        s = self.spec
        self.summary.model = model
        self.reader = open_input(s.input, s.input_format, self.contract, s.id_column,
                                 self.chunk_rows, s.null_values)
        try:
            id_type = pa.int64() if s.id_column is None else pa.string()
            self.output = OutputWriter(s.output, s.output_format, s.id_column or ROW_COLUMN,
                                       self.contract.outputs, id_type)
            self.dead = DeadLetterWriter(s.dead_letter, model)
        except BatonError:
            self.close(publish=False)
            raise

    def close(self, publish: bool) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.output is not None:
            self.output.close(publish)
        if self.dead is not None:
            self.dead.close(publish)

    def _files(self) -> _Files:
        if self.reader is None or self.output is None or self.dead is None:
            raise RuntimeError("ScoreJob.open() must come before run()")
        return _Files(self.reader, self.output, self.dead)

    async def run(self, svc: ScoringModel, started: float,
                  progress: Callable[[Progress], None] | None = None) -> ScoreSummary:
        """Start ``svc``'s workers, score the whole input, publish the outputs."""
        files = self._files()
        pool = svc.pool
        # The job bounds what is in flight itself (one chunk per worker): let the pool
        # queue that much, and give a chunk the time its rows would get as served batches.
        pool.max_queue_rows = max(pool.max_queue_rows, self.chunk_rows * (pool.size + 1))
        pool.timeout = self.spec.timeout or max(
            pool.timeout, pool.timeout * self.chunk_rows / max(pool.max_batch_rows, 1))
        # This process reads, checks and writes all along: a second worker only where a
        # CPU is left for it (on 2 CPUs it scored no faster and held 150 MB more).
        pool.reserved_cpus = 1
        ok = False
        try:
            await asyncio.gather(pool.start(), asyncio.to_thread(_warm_up_arrow))
            ready = self._ready_at = time.perf_counter()
            self.summary.startup_seconds = ready - started
            await self._pipeline(svc, progress)
            scored = time.perf_counter()
            self.summary.peak_rss_mb = _peak_rss([w.pid for w in pool.workers if w])
            ok = True
        finally:
            await pool.close(5.0)
            self.close(publish=ok)
        s = self.summary
        s.workers = pool.size
        s.seconds = time.perf_counter() - started
        s.scoring_seconds = scored - ready
        s.rows_per_s = s.rows_in / s.seconds if s.seconds else 0.0
        s.steady_rows_per_s = s.rows_in / s.scoring_seconds if s.scoring_seconds else 0.0
        s.dead_by_stage = dict(files.dead.by_stage)
        return s

    # -- the three stages ------------------------------------------------------------------
    async def _pipeline(self, svc: ScoringModel,
                        progress: Callable[[Progress], None] | None) -> None:
        chunks = iter(self._files().reader.chunks())
        window = asyncio.Semaphore(svc.pool.size)
        order: asyncio.Queue[asyncio.Task[_Scored] | None] = asyncio.Queue(svc.pool.size + 1)

        async def produce(tg: asyncio.TaskGroup) -> None:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                await window.acquire()
                await order.put(tg.create_task(self._score(svc, chunk, window)))
            await order.put(None)

        async def consume() -> None:
            while (task := await order.get()) is not None:
                scored = await task
                await asyncio.to_thread(self._write, scored)
                if progress is not None:
                    progress(self.progress())

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(produce(tg))
                tg.create_task(consume())
        except BaseExceptionGroup as group:
            raise _first(group) from None

    def progress(self) -> Progress:
        s = self.summary
        total = self.reader.total_bytes if self.reader is not None else 0
        since = time.perf_counter() - self._ready_at if self._ready_at else 0.0
        return Progress(s.rows_in, self._bytes_done, total, s.scored, s.dead_lettered, since)

    async def _score(self, svc: ScoringModel, chunk: Chunk, window: asyncio.Semaphore) -> _Scored:
        try:
            if chunk.batch is None:
                return _Scored(chunk, [], [])
            parts: list[tuple[int, Batch]] = []
            failed: list[tuple[int, str, BatonError]] = []
            await self._isolate(svc, chunk.batch, 0, parts, failed)
            if parts:
                self._model_worked = True
            elif not self._model_worked and len(failed) >= GIVE_UP_AFTER:
                # Not a bad row or two: the model fails on everything it is given. Stop
                # now rather than isolate every row of the file one by one.
                _, _, first = failed[0]
                raise ModelError(f"the model failed on all {len(failed)} rows of the first "
                                 f"chunk it was given, and has scored none: {first.message}",
                                 code="MODEL_FAILS_EVERY_ROW")
            return _Scored(chunk, parts, failed)
        finally:
            window.release()

    async def _isolate(self, svc: ScoringModel, batch: Batch, start: int,
                       parts: list[tuple[int, Batch]],
                       failed: list[tuple[int, str, BatonError]]) -> None:
        try:
            parts.append((start, await self._predict(svc, batch)))
            return
        except (ModelError, WorkerError, ContractViolation) as exc:
            if batch.rows == 1:
                failed.append((start, _stage(exc), exc))
                return
        mid = batch.rows // 2
        await self._isolate(svc, batch.slice(0, mid), start, parts, failed)
        await self._isolate(svc, batch.slice(mid, batch.rows), start + mid, parts, failed)

    async def _predict(self, svc: ScoringModel, batch: Batch) -> Batch:
        waited, delay = 0.0, 0.05
        while True:
            try:
                out: Batch = await svc.predict(batch)
                return out
            except ModelNotReady as exc:  # a worker restarting: wait, never dead-letter
                if waited > NOT_READY_LIMIT:
                    raise ScoringError(f"the model has had no ready worker for "
                                       f"{waited:.0f}s: {exc.message}",
                                       code="MODEL_NOT_READY") from None
                await asyncio.sleep(delay)
                waited, delay = waited + delay, min(delay * 2, 2.0)

    def _write(self, scored: _Scored) -> None:
        try:
            self._write_chunk(scored)
        except OSError as exc:
            raise ScoringError(f"cannot write the results: {exc}",
                               code="OUTPUT_WRITE_FAILED") from None

    def _write_chunk(self, scored: _Scored) -> None:
        files = self._files()
        chunk = scored.chunk
        s = self.summary
        if scored.parts:
            outputs = concat_batches([b for _, b in scored.parts])
            ids = chunk.ids
            if outputs.rows != len(ids):
                index = np.concatenate([np.arange(start, start + b.rows)
                                        for start, b in scored.parts])
                ids = ids.take(pa.array(index))
            files.output.write(ids, outputs)
            s.scored += outputs.rows
        dead = list(chunk.dead)
        for i, stage, err in scored.failed:
            dead.append(DeadRow(int(chunk.rows[i]), chunk.ids[i].as_py(), stage, err,
                                chunk.payload(i)))
        if dead:
            dead.sort(key=lambda d: -1 if d.row is None else d.row)
            files.dead.write(dead)
        s.dead_lettered += len(dead)
        s.rows_in += chunk.rows_read
        s.chunks += 1
        self._bytes_done = chunk.end_bytes


def _warm_up_arrow() -> None:
    """Arrow imports pandas on its first array from Python objects: do it while workers
    start, not inside the first chunk."""
    pa.array([0])


def _stage(exc: BatonError) -> str:
    if isinstance(exc, ContractViolation) and exc.direction == "output":
        return "output_contract"
    return "model"


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the job (others are cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _vm_hwm_mb(pid: int) -> float:
    return (peak_rss(pid) or 0) / 2**20


def _peak_rss(worker_pids: list[int | None]) -> dict[str, float]:
    """Peak resident memory (VmHWM) of this process and of each worker, in MiB."""
    own = _vm_hwm_mb(os.getpid())
    workers = sum(_vm_hwm_mb(p) for p in worker_pids if p is not None)
    return {"baton": round(own, 1), "workers": round(workers, 1),
            "total": round(own + workers, 1)}
