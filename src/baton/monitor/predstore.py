"""The prediction log kept in the registry's database (``BATON_PREDICTION_LOG_STORE=registry``).

The same tables on SQLite and PostgreSQL (created by the registry's Alembic migration
0003), written with SQLAlchemy Core: one row per scored batch with its columns as JSON, the
latest prediction of each stream key per model, and the labels. Every method runs in a
worker thread (the log's background flush, or feedback's ``asyncio.to_thread``), never on
the event loop. Imported only when that store is chosen, so a local log never loads
SQLAlchemy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from baton.errors import BatonError
from baton.monitor.predlog import FeedbackResult, Pending, encode_columns, labelled_pairs
from baton.registry.db import Database
from baton.registry.models import prediction_batches as B
from baton.registry.models import prediction_keys as K
from baton.registry.models import prediction_labels as L

#: Ids per ``IN (...)`` and rows per multi-row INSERT (well under SQLite's 32766 and
#: PostgreSQL's 65535 bound parameters).
_CHUNK = 500


def redacted_db_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


class DatabaseStore:
    """Predictions, stream keys and labels in a SQLAlchemy database (SQLite or PostgreSQL)."""

    kind = "registry"

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Database | None = None

    def describe(self) -> dict[str, Any]:
        return {"store": self.kind, "database": redacted_db_url(self.url)}

    def open(self) -> None:
        """Connect and bring the schema up to date (the registry's own migrations)."""
        if self._db is not None:
            return
        # Alembic's "setup plugin" lines on every start say nothing to an operator.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        db = Database(self.url)
        try:
            db.migrate()
        except Exception as exc:
            db.dispose()
            raise BatonError(f"the prediction log cannot use the registry database "
                             f"{redacted_db_url(self.url)} (BATON_REGISTRY_DB): "
                             f"{str(exc).splitlines()[0]}", code="PREDICTION_LOG_UNAVAILABLE",
                             details={"database": redacted_db_url(self.url)}) from None
        if db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._insert = insert
        self._db = db

    @property
    def _engine(self) -> sa.Engine:
        if self._db is None:
            raise BatonError("the prediction log's registry store is closed",
                             code="PREDICTION_LOG_UNAVAILABLE")
        return self._db.engine

    # -- writes (the log's background flush) -------------------------------------------
    def write(self, items: Sequence[Pending]) -> None:
        batches: list[dict[str, Any]] = []
        keys: dict[tuple[str, str], dict[str, Any]] = {}  # the latest prediction wins
        for model, version, now, rid, record_keys, inputs, outputs in items:
            batches.append({"rid": rid, "model": model, "version": version, "time": now,
                            "rows": inputs.rows, "inputs": encode_columns(inputs).decode(),
                            "outputs": encode_columns(outputs).decode()})
            for i, k in enumerate(record_keys or ()):
                if k:
                    keys[(model, k)] = {"model": model, "key": k, "rid": rid, "idx": i,
                                        "time": now}
        with self._engine.begin() as conn:
            conn.execute(self._insert(B).on_conflict_do_nothing(index_elements=["rid"]),
                         batches)
            if keys:
                upsert = self._insert(K)
                upsert = upsert.on_conflict_do_update(
                    index_elements=["model", "key"],
                    set_={"rid": upsert.excluded.rid, "idx": upsert.excluded.idx,
                          "time": upsert.excluded.time})
                conn.execute(upsert, list(keys.values()))

    def prune(self, cutoff: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(B).where(B.c.time < cutoff))
            conn.execute(sa.delete(K).where(K.c.time < cutoff))  # a key's time is its batch's
            conn.execute(sa.delete(L).where(L.c.time < cutoff))

    # -- feedback ----------------------------------------------------------------------
    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """One transaction, a handful of statements whatever the number of labels: look up
        the batches and keys named, the labels already there, then insert the rest (a
        label that a concurrent request inserted first counts as a duplicate)."""
        now = time.time()
        with self._engine.begin() as conn:
            located = self._locate(conn, model, [given for given, _ in labels])
            pids = sorted({f"{rid}-{idx}" for rid, idx, _ in located.values()})
            existing: set[str] = set()
            for chunk in _chunks(pids):
                existing.update(conn.execute(sa.select(L.c.id).where(L.c.id.in_(chunk)))
                                .scalars())
            status: list[tuple[str, str]] = []  # (given, unknown | duplicate | pid)
            rows: list[dict[str, Any]] = []
            for given, label in labels:
                where = located.get(given)
                if where is None:
                    status.append((given, "unknown"))
                    continue
                rid, idx, version = where
                pid = f"{rid}-{idx}"
                if pid in existing:
                    status.append((given, "duplicate"))
                    continue
                existing.add(pid)  # named twice in this request: the first label stays
                status.append((given, pid))
                rows.append({"id": pid, "model": model, "version": version, "rid": rid,
                             "idx": idx, "label": orjson.dumps(label).decode(), "time": now})
            inserted: set[str] = set()
            for chunk in _chunks(rows):
                stmt = (self._insert(L).values(list(chunk))
                        .on_conflict_do_nothing(index_elements=["id"]).returning(L.c.id))
                inserted.update(conn.execute(stmt).scalars())
        result = FeedbackResult([], [], [])
        for given, what in status:
            if what == "unknown":
                result.unknown.append(given)
            elif what in inserted:
                result.accepted.append(given)
            else:
                result.duplicates.append(given)
        return result

    @staticmethod
    def _locate(conn: sa.Connection, model: str,
                given: Sequence[str]) -> dict[str, tuple[str, int, str]]:
        """(batch id, row, version) of each prediction id of ``model``, else of the record
        key it may be (the key's latest prediction)."""
        as_ids: dict[str, tuple[str, int]] = {}
        for g in given:
            rid, _, index = g.rpartition("-")
            if rid and index.isdigit():
                as_ids[g] = (rid, int(index))
        batches: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(sorted({rid for rid, _ in as_ids.values()})):
            for rid, version, rows in conn.execute(
                    sa.select(B.c.rid, B.c.version, B.c.rows)
                    .where(B.c.rid.in_(chunk), B.c.model == model)):
                batches[rid] = (version, rows)
        found: dict[str, tuple[str, int, str]] = {}
        for g, (rid, idx) in as_ids.items():
            batch = batches.get(rid)
            if batch is not None and idx < batch[1]:
                found[g] = (rid, idx, batch[0])
        for chunk in _chunks(sorted({g for g in given if g not in found})):
            for key, rid, idx, version in conn.execute(
                    sa.select(K.c.key, K.c.rid, K.c.idx, B.c.version)
                    .join(B, B.c.rid == K.c.rid)
                    .where(K.c.model == model, K.c.key.in_(chunk), B.c.model == model)):
                found[key] = (rid, idx, version)
        return found

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(L.c.rid, L.c.idx, L.c.label)
                .where(L.c.model == model, L.c.version == version)
                .order_by(L.c.time.desc(), L.c.id).limit(window)).all()
            outputs: dict[str, dict[str, Any]] = {}
            for chunk in _chunks(sorted({r.rid for r in rows})):
                for rid, text in conn.execute(
                        sa.select(B.c.rid, sa.cast(B.c.outputs, sa.Text))
                        .where(B.c.rid.in_(chunk))):
                    outputs[rid] = orjson.loads(text)
        return labelled_pairs([(r.rid, r.idx, r.label) for r in rows], outputs)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.dispose()
