"""The prediction log: sampled inputs and outputs by prediction id, and the labels that
arrive later, joined to them so the data scientist's quality metrics can be computed.

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
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, time REAL NOT NULL,
    inputs TEXT NOT NULL, outputs TEXT NOT NULL, label TEXT, label_time REAL);
CREATE INDEX IF NOT EXISTS predictions_model_label ON predictions (model, label_time);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
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

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- hot path ------------------------------------------------------------------------
    def record(self, model: str, version: str, ids: Sequence[str], inputs: Batch,
               outputs: Batch) -> None:
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += len(ids)
            return
        now = time.time()
        self._pending.append((model, version, now, list(ids), inputs, outputs))

    # -- background ----------------------------------------------------------------------
    async def run(self, interval: float = 0.5) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(interval)
            await self.flush()
            if time.monotonic() - last_prune > 60:
                last_prune = time.monotonic()
                await asyncio.to_thread(self._prune)

    async def flush(self) -> None:
        if not self._pending:
            return
        items = []
        while self._pending:
            items.append(self._pending.popleft())
        await asyncio.to_thread(self._write, items)

    def _write(self, items: list[tuple[Any, ...]]) -> None:
        rows = []
        for model, version, now, ids, inputs, outputs in items:
            ins = inputs.to_records()
            outs = outputs.to_records()
            for pid, i, o in zip(ids, ins, outs, strict=False):
                rows.append((pid, model, version, now, orjson.dumps(i, option=_NP).decode(),
                             orjson.dumps(o, option=_NP).decode()))
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO predictions "
                                 "(id, model, version, time, inputs, outputs) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        self.written += len(rows)

    def _prune(self) -> None:
        with self._lock:
            assert self._db is not None
            self._db.execute("DELETE FROM predictions WHERE time < ?",
                             (time.time() - self.retention,))

    # -- feedback ------------------------------------------------------------------------
    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Attach true values to logged predictions of ``model``; each id at most once."""
        result = FeedbackResult([], [], [])
        now = time.time()
        with self._lock:
            assert self._db is not None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for pid, label in labels:
                    row = self._db.execute("SELECT label_time FROM predictions WHERE id = ? "
                                           "AND model = ?", (pid, model)).fetchone()
                    if row is None:
                        result.unknown.append(pid)
                    elif row[0] is not None:
                        result.duplicates.append(pid)
                    else:
                        self._db.execute("UPDATE predictions SET label = ?, label_time = ? "
                                         "WHERE id = ?", (orjson.dumps(label).decode(), now,
                                                          pid))
                        result.accepted.append(pid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output, label) pairs of a model version."""
        with self._lock:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT outputs, label FROM predictions WHERE model = ? AND version = ? AND "
                "label_time IS NOT NULL ORDER BY label_time DESC LIMIT ?",
                (model, version, window)).fetchall()
        return [(orjson.loads(o), orjson.loads(lbl)) for o, lbl in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


_NP = orjson.OPT_SERIALIZE_NUMPY


def new_ids(n: int) -> list[str]:
    """Prediction ids: one random request part, then the row index."""
    request = os.urandom(8).hex()
    return [f"{request}-{i}" for i in range(n)]
