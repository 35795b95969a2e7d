"""The prediction store's schema: the upgrade of each earlier store's tables, with their
data, to the one schema; stream keys indexed only when a label names one; and SQLAlchemy
kept off the import of the prediction log."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)

from baton.batch import Batch
from baton.monitor.predlog import Pending, PredictionLog, new_ids
from baton.monitor.predlog.store import DatabaseStore
from tests.registry.conftest import migrate_registry, new_pg_database

#: The local file's schema before one store (baton.monitor.predlog.LocalStore, raw sqlite3).
LOCAL_STORE_DDL = """
CREATE TABLE prediction_batches (
    rid TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, time REAL NOT NULL,
    rows INTEGER NOT NULL, inputs BLOB NOT NULL, outputs BLOB NOT NULL, keys BLOB,
    keyed INTEGER NOT NULL DEFAULT 1);
CREATE INDEX prediction_batches_time ON prediction_batches (time);
CREATE INDEX prediction_batches_unkeyed ON prediction_batches (time) WHERE keyed = 0;
CREATE TABLE prediction_key_index (
    model TEXT NOT NULL, id TEXT NOT NULL, rid TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (model, id)) WITHOUT ROWID;
CREATE TABLE labels (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, rid TEXT NOT NULL,
    idx INTEGER NOT NULL, label TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX labels_model_time ON labels (model, version, time);
"""


def columns(values: list[str]) -> bytes:
    return orjson.dumps({"y": values})


def test_a_local_file_of_the_earlier_schema_keeps_its_predictions_and_labels(
        tmp_path: Path) -> None:
    path = tmp_path / "predictions.sqlite"
    now = time.time()
    db = sqlite3.connect(path)
    db.executescript(LOCAL_STORE_DDL)
    db.executemany("INSERT INTO prediction_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        ("aaaa", "m", "1", now - 30, 2, columns(["x1", "x2"]), columns(["a", "b"]),
         orjson.dumps(["k1", "k2"]), 1),  # keys indexed already
        ("bbbb", "m", "1", now - 20, 2, columns(["x3", "x4"]), columns(["c", "d"]),
         orjson.dumps(["k3", None]), 0),  # keys not indexed yet
        ("cccc", "m", "2", now - 10, 1, columns(["x5"]), columns(["e"]), None, 1)])
    db.executemany("INSERT INTO prediction_key_index VALUES (?, ?, ?, ?)",
                   [("m", "k1", "aaaa", 0), ("m", "k2", "aaaa", 1)])
    db.execute("INSERT INTO labels VALUES ('aaaa-0', 'm', '1', 'aaaa', 0, '\"A\"', ?)",
               (now - 5,))
    db.commit()
    db.close()

    log = PredictionLog(path)
    log.open()
    try:
        assert log.labelled("m", "1", 10) == [({"y": "a"}, "A")]  # the label survived
        result = log.add_labels("m", [("k1", "again"), ("k2", "B"), ("k3", "C"),
                                      ("bbbb-1", "D"), ("cccc-0", "E"), ("k9", "?")])
        assert result.duplicates == ["k1"]  # k1 names aaaa-0, labelled before the upgrade
        assert result.accepted == ["k2", "k3", "bbbb-1", "cccc-0"] and result.unknown == ["k9"]
        pairs = sorted(log.labelled("m", "1", 10), key=lambda p: p[1])
        assert pairs == [({"y": "a"}, "A"), ({"y": "b"}, "B"), ({"y": "c"}, "C"),
                         ({"y": "d"}, "D")]
        assert log.labelled("m", "2", 10) == [({"y": "e"}, "E")]
        rid, ids = new_ids(1)  # and it goes on logging
        log.record("m", "1", rid, Batch({"x": np.array([1.0])}, 1), Batch({"y": ["f"]}, 1))
        log.flush_now()
        assert log.add_labels("m", [(ids[0], "F")]).accepted == [ids[0]]
    finally:
        log.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "labels" not in tables and "prediction_key_index" not in tables
    assert {"prediction_batches", "prediction_keys", "prediction_labels"} <= tables


def page_size_and_journal(path: Path) -> tuple[int, str]:
    with sqlite3.connect(path) as db:
        return (db.execute("PRAGMA page_size").fetchone()[0],
                db.execute("PRAGMA journal_mode").fetchone()[0])


def test_a_new_local_file_has_large_pages_and_an_earlier_one_keeps_its_own(
        tmp_path: Path) -> None:
    """64 KiB pages for a new file (a block's JSON in a few pages, not a hundred); a file
    made with SQLite's default 4 KiB pages keeps them and goes on logging."""
    earlier = tmp_path / "earlier.sqlite"
    with sqlite3.connect(earlier) as db:
        db.execute("CREATE TABLE unrelated (x)")
    for path, size in ((tmp_path / "new.sqlite", 65536), (earlier, 4096)):
        log = PredictionLog(path)
        log.open()
        try:
            rid, ids = new_ids(2)
            log.record("m", "1", rid, Batch({"x": np.array([1.0, 2.0])}, 2),
                       Batch({"y": ["a", "b"]}, 2))
            log.flush_now()
            assert log.add_labels("m", [(ids[1], "B")]).accepted == [ids[1]]
            assert log.labelled("m", "1", 10) == [({"y": "b"}, "B")]
        finally:
            log.close()
        assert page_size_and_journal(path) == (size, "wal"), path.name


def create_registry_0003_tables(engine: Engine) -> None:
    """The tables the registry's migration 0003 made in earlier releases."""
    old = MetaData()
    json_text = Text().with_variant(JSON(), "postgresql")
    Table("prediction_batches", old, Column("rid", Text, primary_key=True),
          Column("model", Text, nullable=False), Column("version", Text, nullable=False),
          Column("time", Float, nullable=False, index=True),
          Column("rows", Integer, nullable=False), Column("inputs", json_text, nullable=False),
          Column("outputs", json_text, nullable=False))
    Table("prediction_keys", old, Column("model", Text, primary_key=True),
          Column("key", Text, primary_key=True), Column("rid", Text, nullable=False),
          Column("idx", Integer, nullable=False), Column("time", Float, nullable=False))
    Table("prediction_labels", old, Column("id", Text, primary_key=True),
          Column("model", Text, nullable=False), Column("version", Text, nullable=False),
          Column("rid", Text, nullable=False), Column("idx", Integer, nullable=False),
          Column("label", Text, nullable=False), Column("time", Float, nullable=False))
    old.create_all(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database on each back end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    with new_pg_database("baton_predstore") as url:
        yield url


def test_the_registry_databases_earlier_tables_keep_their_predictions_and_labels(
        registry_url: str) -> None:
    now = time.time()
    engine = create_engine(registry_url)
    try:
        create_registry_0003_tables(engine)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO prediction_batches (rid, model, version, time, rows, inputs, "
                "outputs) VALUES ('r1', 'm', '1', :t, 2, '{\"x\": [1, 2]}', "
                "'{\"y\": [\"a\", \"b\"]}')"), {"t": now - 10})
            conn.execute(text("INSERT INTO prediction_keys VALUES ('m', 'k1', 'r1', 1, :t)"),
                         {"t": now - 10})
            conn.execute(text("INSERT INTO prediction_labels VALUES ('r1-0', 'm', '1', 'r1', "
                              "0, '\"A\"', :t)"), {"t": now - 5})
    finally:
        engine.dispose()
    migrate_registry(registry_url)  # the registry's own upgrade leaves them alone
    log = PredictionLog(DatabaseStore(registry_url))
    log.open()
    try:
        assert log.labelled("m", "1", 10) == [({"y": "a"}, "A")]
        result = log.add_labels("m", [("r1-0", "again"), ("k1", "B")])
        assert result.duplicates == ["r1-0"] and result.accepted == ["k1"]
        rid, _ = new_ids(1)
        log.record("m", "1", rid, Batch({"x": np.array([3.0])}, 1), Batch({"y": ["c"]}, 1),
                   keys=["k1"])
        log.flush_now()
        assert log.add_labels("m", [("k1", "C")]).accepted == ["k1"]  # its newest prediction
        assert sorted(t for _, t in log.labelled("m", "1", 10)) == ["A", "B", "C"]
    finally:
        log.close()


def test_the_registry_migrates_a_database_that_an_engines_log_used_first(
        registry_url: str) -> None:
    log = PredictionLog(DatabaseStore(registry_url))
    log.open()
    try:
        rid, ids = new_ids(1)
        log.record("m", "1", rid, Batch({"x": np.array([1.0])}, 1), Batch({"y": ["a"]}, 1))
        log.flush_now()
        migrate_registry(registry_url)
        assert log.add_labels("m", [(ids[0], "A")]).accepted == [ids[0]]
    finally:
        log.close()
    engine = create_engine(registry_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert {"bundle_versions", "alembic_version", "baton_predlog_version",
            "prediction_batches"} <= tables


def keyed(model: str, when: float, keys: list[str], values: list[str]) -> Pending:
    n = len(values)
    return Pending(model, "1", when, new_ids(0)[0], keys, Batch({"x": np.zeros(n)}, n),
                   Batch({"y": values}, n))


def test_keys_are_indexed_only_when_a_label_names_one_and_the_latest_wins(
        tmp_path: Path) -> None:
    store = DatabaseStore.local(tmp_path / "p.sqlite")
    store.open()
    try:
        now = time.time()
        store.write([keyed("m", now - 30, ["k", "j"], ["old-k", "j"]),
                     keyed("m", now - 10, ["k"], ["new-k"])])
        count = text("SELECT count(*) FROM prediction_keys")
        with store.engine.connect() as conn:
            assert conn.execute(count).scalar() == 0  # the writer wrote no row per key
        assert store.add_labels("m", [("j", "J")]).accepted == ["j"]
        with store.engine.connect() as conn:
            assert conn.execute(count).scalar() == 2
        # A batch written late, made before the newest one: the key stays where it is.
        store.write([keyed("m", now - 20, ["k"], ["late-k"])])
        assert store.add_labels("m", [("k", "K")]).accepted == ["k"]
        assert sorted(store.labelled("m", "1", 10), key=lambda p: p[1]) == [
            ({"y": "j"}, "J"), ({"y": "new-k"}, "K")]
    finally:
        store.close()


def test_importing_the_prediction_log_does_not_load_sqlalchemy() -> None:
    probe = ("import sys, baton.monitor.predlog as p; "
             "p.PredictionLog, p.open_prediction_log, p.new_ids; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('sqlalchemy', 'alembic') or m.startswith('baton.registry')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
