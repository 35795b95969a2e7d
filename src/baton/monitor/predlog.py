"""The prediction log: sampled inputs and outputs by prediction id, and the labels that
arrive later, joined to them so the data scientist's quality metrics can be computed.

Every prediction has its own id, ``REQUEST-ROW``: the scored batch's random id and the row
in it (HTTP callers get them back; stream outputs carry them in their ``id`` field). Stream
records are also found by their key, which names the latest prediction made for that key
(keys name entities, which repeat; ids name events).

The hot path only appends to an in-memory queue (bounded: when full, entries are dropped
and counted, serving is never slowed); a background task writes batches to SQLite from a
thread, and deletes what is older than the retention.
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
from typing import Any

import orjson

from baton.batch import Batch

log = logging.getLogger("baton.predlog")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prediction_batches (
    rid TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, time REAL NOT NULL,
    rows INTEGER NOT NULL, inputs BLOB NOT NULL, outputs BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS prediction_batches_time ON prediction_batches (time);
CREATE TABLE IF NOT EXISTS prediction_keys (
    id TEXT PRIMARY KEY, rid TEXT NOT NULL, idx INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, rid TEXT NOT NULL,
    idx INTEGER NOT NULL, label TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS labels_model_time ON labels (model, version, time);
"""


@dataclass
class FeedbackResult:
    accepted: list[str]
    unknown: list[str]
    duplicates: list[str]


class PredictionLog:
    def __init__(self, path: Path, *, sample: float = 1.0, retention_days: float = 7.0,
                 max_pending: int = 100_000) -> None:
        self.path = Path(path)
        self.sample = sample
        self.retention = retention_days * 86400
        self.max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()  # one SQLite connection, used from worker threads
        self._db: sqlite3.Connection | None = None
        self._rng = random.Random()
        self._flushing = asyncio.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- hot path ------------------------------------------------------------------------
    def record(self, model: str, version: str, request_id: str, inputs: Batch,
               outputs: Batch, keys: Sequence[str | None] | None = None) -> None:
        """Queue one scored batch. Its prediction ids are ``f"{request_id}-{i}"``; ``keys``
        (streams) are the records' keys, which labels may name instead of the id: a key
        names the latest prediction logged with it."""
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += inputs.rows
            return
        self._pending.append((model, version, time.time(), request_id, keys, inputs, outputs))

    # -- background ----------------------------------------------------------------------
    async def run(self, interval: float = 0.5) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(interval)
            await self.flush()
            if time.monotonic() - last_prune > 60:
                last_prune = time.monotonic()
                await asyncio.to_thread(self._prune)

    def _take(self) -> list[tuple[Any, ...]]:
        items = []
        while self._pending:
            items.append(self._pending.popleft())
        return items

    async def flush(self) -> None:
        """Write what is queued, from a thread (the event loop never waits on SQLite).
        Flushes run one at a time: a flush returns only once what was queued before it,
        including what a concurrent flush took, is written (feedback relies on it)."""
        async with self._flushing:
            if self._pending:
                await asyncio.to_thread(self._write, self._take())

    def flush_now(self) -> None:
        """Write what is queued, in the caller's thread (tools and tests)."""
        if self._pending:
            self._write(self._take())

    def _write(self, items: list[tuple[Any, ...]]) -> None:
        # One row per scored batch (columns as JSON): logging costs per request, not per row.
        batches, keys = [], []
        for model, version, now, rid, record_keys, inputs, outputs in items:
            if record_keys:
                keys.extend((k, rid, i) for i, k in enumerate(record_keys) if k)
            batches.append((rid, model, version, now, inputs.rows,
                            orjson.dumps(inputs.columns, option=_NP),
                            orjson.dumps(outputs.columns, option=_NP)))
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO prediction_batches "
                                 "(rid, model, version, time, rows, inputs, outputs) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", batches)
            if keys:
                self._db.executemany("INSERT OR REPLACE INTO prediction_keys (id, rid, idx) "
                                     "VALUES (?, ?, ?)", keys)
            self._db.execute("COMMIT")
        self.written += sum(b[4] for b in batches)

    def _prune(self) -> None:
        cutoff = time.time() - self.retention
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM prediction_batches WHERE time < ?", (cutoff,))
            self._db.execute("DELETE FROM labels WHERE time < ?", (cutoff,))
            self._db.execute("DELETE FROM prediction_keys WHERE rid NOT IN "
                             "(SELECT rid FROM prediction_batches)")
            self._db.execute("COMMIT")

    # -- feedback ------------------------------------------------------------------------
    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Attach true values to logged predictions of ``model``; each prediction at most
        once. An id is a prediction id, or a stream record's key (its latest prediction)."""
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

    @staticmethod
    def _locate(db: sqlite3.Connection, model: str, given: str) -> tuple[str, int, str] | None:
        """(batch id, row, version) of a prediction id, else of a record key."""
        rid, _, index = given.rpartition("-")
        if rid and index.isdigit():
            found = db.execute("SELECT version, rows FROM prediction_batches WHERE rid = ? AND "
                               "model = ?", (rid, model)).fetchone()
            if found is not None and int(index) < found[1]:
                return rid, int(index), found[0]
        row = db.execute("SELECT k.rid, k.idx, b.version FROM prediction_keys k JOIN "
                         "prediction_batches b ON b.rid = k.rid WHERE k.id = ? AND "
                         "b.model = ?", (given, model)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""
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
        pairs = []
        for rid, idx, label in rows:
            cols = outputs.get(rid)
            if cols is not None:
                pairs.append(({k: v[idx] for k, v in cols.items()}, orjson.loads(label)))
        return pairs

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


_NP = orjson.OPT_SERIALIZE_NUMPY


def new_ids(n: int) -> tuple[str, list[str]]:
    """A request id and its prediction ids: the request id, then the row index."""
    request = os.urandom(8).hex()
    return request, [f"{request}-{i}" for i in range(n)]
