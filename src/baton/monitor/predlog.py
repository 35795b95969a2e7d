"""The prediction log: sampled inputs and outputs by prediction id, and the labels that
arrive later, joined to them so the data scientist's quality metrics can be computed.

Every prediction has its own id, ``REQUEST-ROW``: the scored batch's random id and the row
in it (HTTP callers get them back; stream outputs carry them in their ``id`` field). Stream
records are also found by their key, which names the latest prediction made for that key
(keys name entities, which repeat; ids name events).

The hot path only appends to an in-memory queue (bounded: when full, entries are dropped
and counted, serving is never slowed); a background task hands what is queued to a thread
that writes it to the **store** and deletes what is older than the retention. Two stores
keep the same tables and semantics behind :class:`PredictionStore`:

- ``local``: a SQLite file, ``HOME/predictions.sqlite`` (:class:`LocalStore`);
- ``registry``: the registry's database, SQLite or PostgreSQL (``predstore.DatabaseStore``).

An optional **export** (``BATON_PREDICTION_LOG_SINK``, :mod:`baton.monitor.export`) also
receives every logged prediction, one JSON record each, for the data team's own tools.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from baton.batch import Batch, concat_batches

if TYPE_CHECKING:
    from baton.monitor.export import PredictionExport
    from baton.settings import Settings

log = logging.getLogger("baton.predlog")

#: One scored batch waiting to be written: (model, version, time, request id, stream keys
#: or None, inputs, outputs). A plain tuple: the hot path builds one per request.
Pending = tuple[str, str, float, str, Sequence[str | None] | None, Batch, Batch]

_NP = orjson.OPT_SERIALIZE_NUMPY


def labelled_pairs(rows: Sequence[tuple[str, int, str]],
                   outputs: dict[str, dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(output record, label) for each (batch id, row, label as JSON) whose batch's output
    columns are known (a pruned batch's labels are left out)."""
    pairs = []
    for rid, idx, label in rows:
        cols = outputs.get(rid)
        if cols is not None:
            pairs.append(({k: v[idx] for k, v in cols.items()}, orjson.loads(label)))
    return pairs


def encode_columns(batch: Batch) -> bytes:
    """A batch's columns as one JSON object of lists (NaN becomes null)."""
    return orjson.dumps(batch.columns, option=_NP)


@dataclass
class FeedbackResult:
    accepted: list[str]
    unknown: list[str]
    duplicates: list[str]


class PredictionStore(Protocol):
    """Where logged predictions and their labels are kept. Every method but ``describe``
    is called from a worker thread, never on the event loop."""

    kind: str

    def describe(self) -> dict[str, Any]:
        """``{"store": kind, ...where}``, with no secret in it."""

    def open(self) -> None:
        """Create or migrate the tables; raise :class:`BatonError` if impossible."""

    def write(self, items: Sequence[Pending]) -> None:
        """Store scored batches in one transaction (a batch id already there is kept as it
        is; a stream key names the latest of them)."""

    def prune(self, cutoff: float) -> None:
        """Delete predictions, keys and labels older than ``cutoff`` (Unix seconds)."""

    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Attach labels in one transaction; each prediction at most once."""

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""

    def close(self) -> None: ...


#: Most rows gathered into one logged block (one row in the store).
BLOCK_ROWS = 1024


class _Block:
    """Batches of one model version logged since the last write, to be stored as one."""

    def __init__(self, inputs: Batch, outputs: Batch) -> None:
        self.rid = os.urandom(8).hex()
        self.time = time.time()
        self.rows = 0
        self.inputs: list[Batch] = []
        self.outputs: list[Batch] = []
        self.keys: list[str | None] = []
        self.keyed = False
        self.shape = (_shape(inputs), _shape(outputs))

    def takes(self, inputs: Batch, outputs: Batch) -> bool:
        """Whether the batch's columns can be concatenated to this block's."""
        return self.rows + inputs.rows <= BLOCK_ROWS and \
            (_shape(inputs), _shape(outputs)) == self.shape

    def add(self, inputs: Batch, outputs: Batch, keys: Sequence[str | None] | None) -> int:
        start = self.rows
        self.inputs.append(inputs)
        self.outputs.append(outputs)
        if keys:
            self.keyed = True
            self.keys.extend(keys)
        else:
            self.keys.extend([None] * inputs.rows)
        self.rows += inputs.rows
        return start

    def pending(self, model: str, version: str) -> Pending:
        return (model, version, self.time, self.rid, self.keys if self.keyed else None,
                concat_batches(self.inputs), concat_batches(self.outputs))


def _shape(batch: Batch) -> tuple[Any, ...]:
    """Column names, and for arrays their dtype kind and inner dimensions."""
    return tuple((name, col.dtype.kind, col.shape[1:]) if isinstance(col, np.ndarray)
                 else (name,) for name, col in batch.columns.items())


class PredictionLog:
    """``store`` is a :class:`PredictionStore`, or the path of a local SQLite file."""

    def __init__(self, store: PredictionStore | Path | str, *, sample: float = 1.0,
                 retention_days: float = 7.0, max_pending: int = 100_000,
                 export: PredictionExport | None = None) -> None:
        self.store: PredictionStore = LocalStore(Path(store)) \
            if isinstance(store, str | os.PathLike) else store
        self.sample = sample
        self.retention = retention_days * 86400
        self.max_pending = max_pending
        self.export = export
        #: Rows not logged because the queue was full, and rows written to the store.
        self.dropped = 0
        self.written = 0
        #: Background writes that failed (their batches are queued again), and the latest.
        self.failures = 0
        self.last_error: str | None = None
        self._pending: collections.deque[Pending] = collections.deque()
        #: Batches whose write failed, written first next time (and not exported again).
        self._retry: collections.deque[Pending] = collections.deque()
        self._rng = random.Random()
        self._blocks: dict[tuple[str, str], _Block] = {}
        self._flushing = asyncio.Lock()
        self._opened = False

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
                "dropped": self.dropped, "pending": len(self._pending) + len(self._retry),
                "failures": self.failures, "last_error": self.last_error,
                "export": self.export.describe() if self.export is not None else None}

    # -- hot path ------------------------------------------------------------------------
    def log(self, model: str, version: str, inputs: Batch, outputs: Batch,
            keys: Sequence[str | None] | None = None) -> list[str]:
        """Log one scored batch (sampled) and return its prediction ids.

        Small batches of one model version are gathered into one *block* (up to
        :data:`BLOCK_ROWS` rows, until the next write): their ids share the block's id and
        count on from the rows before them, and the store writes one row per block, so a
        stream of 1-row requests costs the store a row per few hundred requests, not one
        each. A batch that is not logged still gets ids (random ones)."""
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return new_ids(inputs.rows)[1]
        if len(self._pending) + len(self._retry) >= self.max_pending:
            self.dropped += inputs.rows
            return new_ids(inputs.rows)[1]
        where = (model, version)
        block = self._blocks.get(where)
        if block is not None and not block.takes(inputs, outputs):
            self._seal(where)
            block = None
        if block is None:
            block = self._blocks[where] = _Block(inputs, outputs)
        start = block.add(inputs, outputs, keys)
        if block.rows >= BLOCK_ROWS:
            self._seal(where)
        return [f"{block.rid}-{start + i}" for i in range(inputs.rows)]

    def record(self, model: str, version: str, request_id: str, inputs: Batch,
               outputs: Batch, keys: Sequence[str | None] | None = None) -> None:
        """Queue one scored batch under ids the caller chose: ``f"{request_id}-{i}"``;
        ``keys`` (streams) are the records' keys, which labels may name instead of the id
        (a key names the latest prediction logged with it)."""
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return
        if len(self._pending) + len(self._retry) >= self.max_pending:
            self.dropped += inputs.rows
            return
        self._pending.append((model, version, time.time(), request_id, keys, inputs, outputs))

    def _seal(self, where: tuple[str, str]) -> None:
        block = self._blocks.pop(where, None)
        if block is not None:
            self._pending.append(block.pending(*where))

    # -- background ----------------------------------------------------------------------
    async def run(self, interval: float = 0.5) -> None:
        """Write every ``interval`` seconds and prune every minute; a store that fails is
        retried at the next interval (its batches stay queued), and said once in the log."""
        last_prune = 0.0
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
                if time.monotonic() - last_prune > 60:
                    await asyncio.to_thread(self._prune)
                    last_prune = time.monotonic()
            except Exception as exc:
                if not failing:
                    log.warning("prediction log: cannot write to the %s store (%s); "
                                "retrying, %d batches queued", self.store.kind,
                                _first_line(exc), len(self._pending) + len(self._retry))
                failing = True
                continue
            if failing:
                log.info("prediction log: writing to the %s store again", self.store.kind)
                failing = False

    def _take(self) -> list[Pending]:
        """What to write: batches of a failed write first, then the newly queued ones,
        which are handed to the export here, once (a retried write is not exported
        again; the export encodes and writes them in its own thread)."""
        for where in list(self._blocks):
            self._seal(where)
        items = []
        while self._retry:
            items.append(self._retry.popleft())
        new = []
        while self._pending:
            new.append(self._pending.popleft())
        if new and self.export is not None:
            self.export.offer(new)
        return items + new

    async def flush(self) -> None:
        """Write what is queued, from a thread (the event loop never waits on the store).
        Flushes run one at a time: a flush returns only once what was queued before it,
        including what a concurrent flush took, is written (feedback relies on it)."""
        async with self._flushing:
            if self._pending or self._retry or self._blocks:
                items = self._take()
                try:
                    await asyncio.to_thread(self.store.write, items)
                except Exception as exc:
                    self._failed(items, exc)
                    raise
                self.written += sum(item[5].rows for item in items)

    def flush_now(self) -> None:
        """Write what is queued, in the caller's thread (tools and tests)."""
        if self._pending or self._retry or self._blocks:
            items = self._take()
            try:
                self.store.write(items)
            except Exception as exc:
                self._failed(items, exc)
                raise
            self.written += sum(item[5].rows for item in items)

    def _failed(self, items: list[Pending], exc: Exception) -> None:
        """Keep a failed write's batches for the next one, as far as the queue's bound
        allows (the oldest are dropped first)."""
        self.failures += 1
        self.last_error = _first_line(exc)
        room = max(0, self.max_pending - len(self._pending))
        keep = items[len(items) - room:] if room < len(items) else items
        for item in items[:len(items) - len(keep)]:
            self.dropped += item[5].rows
        self._retry.extend(keep)

    def _prune(self) -> None:
        self.store.prune(time.time() - self.retention)

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
                        len(self._pending) + len(self._retry), _first_line(exc))
        try:
            await asyncio.to_thread(self.close)
        except Exception as exc:
            log.warning("prediction log: closing the %s store failed: %s", self.store.kind,
                        _first_line(exc))


class LocalStore:
    """A local SQLite file (``HOME/predictions.sqlite``): one connection, used from worker
    threads under a lock."""

    kind = "local"

    # Stream keys travel with their batch (``keys``, a JSON list) and are indexed only when
    # a label names a key: the hot path never writes a row per record. ``keyed = 0`` marks
    # the batches whose keys are not in ``prediction_key_index`` yet.
    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS prediction_batches (
        rid TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, time REAL NOT NULL,
        rows INTEGER NOT NULL, inputs BLOB NOT NULL, outputs BLOB NOT NULL, keys BLOB,
        keyed INTEGER NOT NULL DEFAULT 1);
    CREATE INDEX IF NOT EXISTS prediction_batches_time ON prediction_batches (time);
    CREATE INDEX IF NOT EXISTS prediction_batches_unkeyed ON prediction_batches (time)
        WHERE keyed = 0;
    DROP TABLE IF EXISTS prediction_keys;
    CREATE TABLE IF NOT EXISTS prediction_key_index (
        model TEXT NOT NULL, id TEXT NOT NULL, rid TEXT NOT NULL, idx INTEGER NOT NULL,
        PRIMARY KEY (model, id)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS labels (
        id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, rid TEXT NOT NULL,
        idx INTEGER NOT NULL, label TEXT NOT NULL, time REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS labels_model_time ON labels (model, version, time);
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def describe(self) -> dict[str, Any]:
        return {"store": self.kind, "path": str(self.path)}

    def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(prediction_batches)")}
        if columns and "keyed" not in columns:  # a log written before keys were lazy
            self._db.executescript("ALTER TABLE prediction_batches ADD COLUMN keys BLOB; "
                                   "ALTER TABLE prediction_batches ADD COLUMN keyed INTEGER "
                                   "NOT NULL DEFAULT 1;")
        self._db.executescript(self._SCHEMA)

    def write(self, items: Sequence[Pending]) -> None:
        # One row per scored batch (columns as JSON, stream keys as a JSON list): logging
        # costs per request, not per row.
        batches = [(rid, model, version, now, inputs.rows, encode_columns(inputs),
                    encode_columns(outputs), orjson.dumps(record_keys) if record_keys else None,
                    0 if record_keys else 1)
                   for model, version, now, rid, record_keys, inputs, outputs in items]
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR IGNORE INTO prediction_batches "
                                     "(rid, model, version, time, rows, inputs, outputs, keys, "
                                     "keyed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batches)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def prune(self, cutoff: float) -> None:
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM prediction_batches WHERE time < ?", (cutoff,))
            self._db.execute("DELETE FROM labels WHERE time < ?", (cutoff,))
            self._db.execute("DELETE FROM prediction_key_index WHERE rid NOT IN "
                             "(SELECT rid FROM prediction_batches)")
            self._db.execute("COMMIT")

    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        result = FeedbackResult([], [], [])
        now = time.time()
        with self._lock:
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                for given, label in labels:
                    where = self._locate(db, model, given)
                    if where is None:
                        result.unknown.append(given)
                        continue
                    rid, idx, version = where
                    pid = f"{rid}-{idx}"
                    if db.execute("SELECT 1 FROM labels WHERE id = ?", (pid,)).fetchone():
                        result.duplicates.append(given)
                        continue
                    db.execute("INSERT INTO labels (id, model, version, rid, idx, label, time) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (pid, model, version, rid, idx, orjson.dumps(label).decode(),
                                now))
                    result.accepted.append(given)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    @classmethod
    def _locate(cls, db: sqlite3.Connection, model: str,
                given: str) -> tuple[str, int, str] | None:
        """(batch id, row, version) of a prediction id, else of a record key."""
        rid, _, index = given.rpartition("-")
        if rid and index.isdigit():
            found = db.execute("SELECT version, rows FROM prediction_batches WHERE rid = ? AND "
                               "model = ?", (rid, model)).fetchone()
            if found is not None and int(index) < found[1]:
                return rid, int(index), found[0]
        cls._index_keys(db)
        row = db.execute("SELECT k.rid, k.idx, b.version FROM prediction_key_index k JOIN "
                         "prediction_batches b ON b.rid = k.rid WHERE k.model = ? AND "
                         "k.id = ?", (model, given)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    @staticmethod
    def _index_keys(db: sqlite3.Connection) -> None:
        """Index the keys of the batches logged since the last time, oldest first, so a
        key ends up naming its latest prediction (inside the caller's transaction)."""
        db.execute("INSERT OR REPLACE INTO prediction_key_index (model, id, rid, idx) "
                   "SELECT b.model, j.value, b.rid, CAST(j.key AS INTEGER) "
                   "FROM prediction_batches b, json_each(b.keys) j "
                   "WHERE b.keyed = 0 AND j.value IS NOT NULL ORDER BY b.time, b.rowid, j.key")
        db.execute("UPDATE prediction_batches SET keyed = 1 WHERE keyed = 0")

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        with self._lock:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT rid, idx, label FROM labels WHERE model = ? AND version = ? "
                "ORDER BY time DESC, id LIMIT ?", (model, version, window)).fetchall()
            rids = sorted({r for r, _, _ in rows})
            outputs: dict[str, dict[str, Any]] = {}
            for i in range(0, len(rids), 500):
                chunk = rids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for rid, blob in self._db.execute(
                        f"SELECT rid, outputs FROM prediction_batches WHERE rid IN ({marks})",
                        chunk):
                    outputs[rid] = orjson.loads(blob)
        return labelled_pairs(rows, outputs)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def open_prediction_log(settings: Settings) -> PredictionLog | None:
    """The engine's prediction log as the settings describe it (None when sampling is 0):
    its store, and its export when ``prediction_log_sink`` names one. Nothing is opened."""
    if settings.prediction_log_sample <= 0:
        return None
    store: PredictionStore
    if settings.prediction_log_store == "registry":
        from baton.monitor.predstore import DatabaseStore

        store = DatabaseStore(settings.registry_url)
    else:
        store = LocalStore(settings.prediction_log_path)
    export = None
    if settings.prediction_log_sink:
        from baton.monitor.export import PredictionExport

        export = PredictionExport(settings.prediction_log_sink)
    return PredictionLog(store, sample=settings.prediction_log_sample,
                         retention_days=settings.prediction_log_days, export=export)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def new_ids(n: int) -> tuple[str, list[str]]:
    """A request id and its prediction ids: the request id, then the row index."""
    request = os.urandom(8).hex()
    return request, [f"{request}-{i}" for i in range(n)]
