"""The prediction store: predictions, stream keys and labels in a SQL database through
SQLAlchemy Core, the same tables (:mod:`.tables`) and code on SQLite and PostgreSQL.

``local`` is a SQLite file of the engine's own (``HOME/predictions.sqlite``); ``registry``
is a shared database (``BATON_REGISTRY_DB``: the registry's, or any other). Opening the
store brings its tables up to date with the prediction log's own Alembic migrations,
which also convert the schemas of earlier releases, data included. Every method but
``describe`` runs in a worker thread (the writer, or feedback's ``asyncio.to_thread``),
never on the event loop; this module is imported only when a store is made, so importing
the prediction log does not load SQLAlchemy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from baton.errors import BatonError
from baton.monitor.predlog.keys import index_keys, upsert
from baton.monitor.predlog.records import (
    FeedbackResult,
    Pending,
    first_line,
    labelled_pairs,
)
from baton.monitor.predlog.tables import HEAD_REVISION, VERSION_TABLE
from baton.monitor.predlog.tables import prediction_batches as B
from baton.monitor.predlog.tables import prediction_keys as K
from baton.monitor.predlog.tables import prediction_labels as L

MIGRATIONS = Path(__file__).parent / "migrations"

#: Ids per ``IN (...)`` and rows per multi-row INSERT (well under SQLite's 32766 and
#: PostgreSQL's 65535 bound parameters).
_CHUNK = 500


def redacted_db_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver; the "begin" event opens each transaction with BEGIN
    # IMMEDIATE, so concurrent writers (feedback beside the writer) queue, not fail.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # 64 KiB pages (a new file only): a block's JSON spans a few pages, not a hundred, and
    # the WAL is checkpointed less often; writes cost 0.33 us a row instead of 1.2
    # (docs/monitoring.md#where-predictions-are-kept).
    cur.execute("PRAGMA page_size=65536")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _quiet(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Context impl", "Will assume"))


def _begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _at_head(conn: sa.Connection) -> bool:
    """Whether the tables are at the newest revision: then every start after the first
    skips Alembic (about 0.4 s to import and read its scripts)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return False
    version = sa.table(VERSION_TABLE, sa.column("version_num"))
    return list(conn.execute(sa.select(version.c.version_num)).scalars()) == [HEAD_REVISION]


class DatabaseStore:
    """Predictions, stream keys and labels in SQLite or PostgreSQL."""

    def __init__(self, url: str, *, kind: str = "registry", path: Path | None = None) -> None:
        self.url = url
        self.kind = kind
        self.path = path
        self._engine: sa.Engine | None = None

    @classmethod
    def local(cls, path: Path) -> DatabaseStore:
        """The engine's own SQLite file."""
        return cls(f"sqlite:///{path}", kind="local", path=Path(path))

    def describe(self) -> dict[str, Any]:
        if self.path is not None:
            return {"store": self.kind, "path": str(self.path)}
        return {"store": self.kind, "database": redacted_db_url(self.url)}

    def open(self) -> None:
        """Connect and bring the tables up to date (the prediction log's migrations)."""
        if self._engine is not None:
            return
        engine = self._connect()
        try:
            self._migrate(engine)
        except Exception as exc:
            engine.dispose()
            raise self._unavailable(exc) from None
        self._engine = engine

    def _connect(self) -> sa.Engine:
        try:
            url = make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise self._unavailable(exc) from None
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, pool_pre_ping=True)
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _begin_immediate)
        return engine

    @staticmethod
    def _migrate(engine: sa.Engine) -> None:
        with engine.begin() as conn:
            if _at_head(conn):
                return
        # Alembic's "setup plugin" (on import), "Context impl" and "Will assume" lines on
        # every start say nothing to an operator; "Running upgrade" does, and stays.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        migration = logging.getLogger("alembic.runtime.migration")
        if _quiet not in migration.filters:
            migration.addFilter(_quiet)
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _unavailable(self, exc: BaseException) -> BatonError:
        if self.path is not None:
            return BatonError(f"the prediction log cannot use {self.path}: {first_line(exc)}",
                              code="PREDICTION_LOG_UNAVAILABLE",
                              details={"path": str(self.path)})
        where = redacted_db_url(self.url)
        return BatonError(f"the prediction log cannot use the registry database {where} "
                          f"(BATON_REGISTRY_DB): {first_line(exc)}",
                          code="PREDICTION_LOG_UNAVAILABLE", details={"database": where})

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            raise BatonError(f"the prediction log's {self.kind} store is closed",
                             code="PREDICTION_LOG_UNAVAILABLE")
        return self._engine

    # -- writes (the log's writer) -----------------------------------------------------
    def write(self, items: Sequence[Pending]) -> None:
        """One row per block: its columns and stream keys as JSON, keys indexed later."""
        batches = [_row(item) for item in items]
        engine = self.engine
        with engine.begin() as conn:
            conn.execute(upsert(engine, B).on_conflict_do_nothing(index_elements=["rid"]),
                         batches)

    def prune(self, cutoff: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(B).where(B.c.time < cutoff))
            conn.execute(sa.delete(K).where(K.c.time < cutoff))  # a key's time is its batch's
            conn.execute(sa.delete(L).where(L.c.time < cutoff))

    # -- feedback ----------------------------------------------------------------------
    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """One transaction, a handful of statements whatever the number of labels: look up
        the batches and keys named, the labels already there, then insert the rest (a
        label that a concurrent request inserted first counts as a duplicate)."""
        now = time.time()
        engine = self.engine
        with engine.begin() as conn:
            located = _locate(engine, conn, model, [given for given, _ in labels])
            pids = sorted({f"{rid}-{idx}" for rid, idx, _ in located.values()})
            existing: set[str] = set()
            for chunk in chunks(pids):
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
            for chunk in chunks(rows):
                stmt = (upsert(engine, L).values(list(chunk))
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

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(L.c.rid, L.c.idx, L.c.label)
                .where(L.c.model == model, L.c.version == version)
                .order_by(L.c.time.desc(), L.c.id).limit(window)).all()
            outputs: dict[str, dict[str, Any]] = {}
            for chunk in chunks(sorted({r.rid for r in rows})):
                for rid, text in conn.execute(
                        sa.select(B.c.rid, sa.cast(B.c.outputs, sa.Text))
                        .where(B.c.rid.in_(chunk))):
                    outputs[rid] = orjson.loads(text)
        return labelled_pairs([(r.rid, r.idx, r.label) for r in rows], outputs)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def _locate(engine: sa.Engine, conn: sa.Connection, model: str,
            given: Sequence[str]) -> dict[str, tuple[str, int, str]]:
    """(batch id, row, version) of each prediction id of ``model``, else of the record
    key it may be (the key's latest prediction; keys are indexed first if need be)."""
    as_ids: dict[str, tuple[str, int]] = {}
    for g in given:
        rid, _, index = g.rpartition("-")
        if rid and index.isdigit():
            as_ids[g] = (rid, int(index))
    batches: dict[str, tuple[str, int]] = {}
    for chunk in chunks(sorted({rid for rid, _ in as_ids.values()})):
        for rid, version, rows in conn.execute(
                sa.select(B.c.rid, B.c.version, B.c.rows)
                .where(B.c.rid.in_(chunk), B.c.model == model)):
            batches[rid] = (version, rows)
    found: dict[str, tuple[str, int, str]] = {}
    for g, (rid, idx) in as_ids.items():
        batch = batches.get(rid)
        if batch is not None and idx < batch[1]:
            found[g] = (rid, idx, batch[0])
    keys = sorted({g for g in given if g not in found})
    if keys:
        index_keys(engine, conn)
    for chunk in chunks(keys):
        for key, rid, idx, version in conn.execute(
                sa.select(K.c.key, K.c.rid, K.c.idx, B.c.version)
                .join(B, B.c.rid == K.c.rid)
                .where(K.c.model == model, K.c.key.in_(chunk), B.c.model == model)):
            found[key] = (rid, idx, version)
    return found


def _row(item: Pending) -> dict[str, Any]:
    inputs, outputs = item.stored_json()
    return {"rid": item.rid, "model": item.model, "version": item.version, "time": item.time,
            "rows": item.inputs.rows, "inputs": inputs, "outputs": outputs,
            "keys": orjson.dumps(item.keys).decode() if item.keys else None,
            "keyed": not item.keys}
