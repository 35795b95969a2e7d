"""The prediction log on its own: request ids and stream keys, labels, windows, retention,
and the export sink; every store test runs on the local SQLite file and on the registry
store in a real PostgreSQL database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text

from baton.batch import Batch
from baton.errors import BatonError
from baton.monitor.export import PredictionExport
from baton.monitor.predlog import PredictionLog, new_ids
from baton.monitor.predlog.store import DatabaseStore
from baton.monitor.predlog.tables import HEAD_REVISION
from tests.conftest import migration_head

MakeLog = Callable[..., PredictionLog]


def batch(values: list[float]) -> Batch:
    return Batch({"x": np.array(values)}, len(values))


@pytest.fixture(params=["local", "registry-postgresql", "registry-sqlite"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLog]:
    """Factory: an opened prediction log on this test's store (closed after the test): the
    local SQLite file, or the registry store on PostgreSQL or on a registry SQLite file. On
    PostgreSQL every log of the module shares one database, so each test names its own
    models (``model``)."""
    logs: list[PredictionLog] = []

    def make(name: str = "p", **kwargs: Any) -> PredictionLog:
        if request.param == "local":
            log = PredictionLog(tmp_path / f"{name}.sqlite", **kwargs)
        elif request.param == "registry-sqlite":
            log = PredictionLog(DatabaseStore(f"sqlite:///{tmp_path}/registry-{name}.db"),
                                **kwargs)
        else:
            log = PredictionLog(DatabaseStore(request.getfixturevalue("postgres_url")),
                                **kwargs)
        log.open()
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


@pytest.fixture
def model() -> str:
    return f"m-{new_ids(1)[0]}"


def test_labels_join_by_prediction_ids_and_by_stream_keys(make_log: MakeLog, model: str) -> None:
    log = make_log()
    rid, ids = new_ids(2)
    log.record(model, "1", rid, batch([1.0, 2.0]), Batch({"y": ["a", "b"]}, 2))
    stream_rid, stream_ids = new_ids(2)
    log.record(model, "1", stream_rid, batch([3.0, np.nan]), Batch({"y": ["c", "d"]}, 2),
               keys=["k-7", "order:42"])
    log.flush_now()
    result = log.add_labels(model, [(ids[1], "b"), ("order:42", "x"), (f"{rid}-9", "z"),
                                    ("nope", "z"), ("k-7", "c")])
    assert result.accepted == [ids[1], "order:42", "k-7"]  # "k-7" is a key, not an id
    assert result.unknown == [f"{rid}-9", "nope"]
    # The same prediction, named by its key or by its id: labelled once only.
    again = log.add_labels(model, [("order:42", "y"), (stream_ids[1], "y")])
    assert again.duplicates == ["order:42", stream_ids[1]]
    assert log.add_labels("other-model", [(ids[0], "a")]).unknown == [ids[0]]
    pairs = sorted(log.labelled(model, "1", 10), key=lambda p: p[0]["y"])
    assert pairs == [({"y": "b"}, "b"), ({"y": "c"}, "c"), ({"y": "d"}, "x")]
    assert log.labelled(model, "2", 10) == []


def test_a_repeated_key_names_its_latest_prediction(make_log: MakeLog, model: str) -> None:
    """Keys name entities: each new event of a key can be labelled, earlier ones by id."""
    log = make_log()
    first, first_ids = new_ids(1)
    log.record(model, "1", first, batch([1.0]), Batch({"y": ["early"]}, 1), keys=["cust-3"])
    log.flush_now()
    assert log.add_labels(model, [("cust-3", "L1")]).accepted == ["cust-3"]
    second, _ = new_ids(1)
    log.record(model, "1", second, batch([2.0]), Batch({"y": ["late"]}, 1), keys=["cust-3"])
    log.flush_now()
    assert log.add_labels(model, [("cust-3", "L2")]).accepted == ["cust-3"]
    assert log.add_labels(model, [(first_ids[0], "L3")]).duplicates == [first_ids[0]]
    pairs = sorted(log.labelled(model, "1", 10), key=lambda p: p[1])
    assert pairs == [({"y": "early"}, "L1"), ({"y": "late"}, "L2")]


def test_a_key_repeated_in_one_write_names_the_last_of_them(make_log: MakeLog,
                                                             model: str) -> None:
    log = make_log()
    rid, ids = new_ids(3)
    log.record(model, "1", rid, batch([1.0, 2.0, 3.0]), Batch({"y": [1.0, 2.0, 3.0]}, 3),
               keys=["c", None, "c"])
    later, _ = new_ids(1)
    log.record(model, "1", later, batch([4.0]), Batch({"y": [4.0]}, 1), keys=[None])
    log.flush_now()
    assert log.add_labels(model, [("c", 30.0), (ids[0], 10.0)]).accepted == ["c", ids[0]]
    pairs = sorted(log.labelled(model, "1", 10), key=lambda p: p[1])
    assert pairs == [({"y": 1.0}, 10.0), ({"y": 3.0}, 30.0)]
    assert log.written == 4


def test_the_window_holds_the_latest_labels_and_values_keep_their_types(
        make_log: MakeLog, model: str) -> None:
    log = make_log()
    rid, ids = new_ids(4)
    outputs = Batch({"prediction": [True, False, None, True],
                     "score": np.array([0.5, np.nan, 1.5, 2.0]),
                     "vec": np.array([[1, 2], [3, 4], [5, 6], [7, 8]])}, 4)
    log.record(model, "1", rid, batch([1.0, 2.0, 3.0, 4.0]), outputs)
    log.flush_now()
    for i, label in enumerate([True, {"a": [1, "x"]}, None, 3]):
        assert log.add_labels(model, [(ids[i], label)]).accepted == [ids[i]]
        time.sleep(0.01)  # labels are ordered by their time
    pairs = log.labelled(model, "1", 2)
    assert pairs == [({"prediction": True, "score": 2.0, "vec": [7, 8]}, 3),
                     ({"prediction": None, "score": 1.5, "vec": [5, 6]}, None)]
    everything = log.labelled(model, "1", 10)
    assert everything[-1] == ({"prediction": True, "score": 0.5, "vec": [1, 2]}, True)
    assert everything[-2] == ({"prediction": False, "score": None, "vec": [3, 4]},
                              {"a": [1, "x"]})


def test_many_labels_in_one_request(make_log: MakeLog, model: str) -> None:
    """More ids than one SQL statement takes at once (the registry store chunks them)."""
    log = make_log()
    rid, ids = new_ids(1200)
    log.record(model, "1", rid, batch([float(i) for i in range(1200)]),
               Batch({"y": list(range(1200))}, 1200))
    log.flush_now()
    result = log.add_labels(model, [(pid, i % 7) for i, pid in enumerate(ids)] +
                            [(ids[5], 0), ("missing", 1)])
    assert result.accepted == ids and result.duplicates == [ids[5]]
    assert result.unknown == ["missing"]
    pairs = log.labelled(model, "1", 2000)
    assert len(pairs) == 1200 and all(o["y"] % 7 == t for o, t in pairs)


def test_sampling_and_retention(make_log: MakeLog, model: str) -> None:
    off = make_log("off", sample=0.0)
    off.record(model, "1", new_ids(1)[0], batch([1.0]), Batch({"y": [1]}, 1))
    off.flush_now()
    assert off.written == 0
    half = make_log("half", sample=0.5)
    for _ in range(400):
        half.record(model, "1", new_ids(1)[0], batch([1.0]), Batch({"y": [1]}, 1))
    half.flush_now()
    assert 120 < half.written < 280
    log = make_log(retention_days=1 / 86400)  # one second
    rid, ids = new_ids(1)
    log.record(model, "1", rid, batch([1.0]), Batch({"y": [1.0]}, 1), keys=["k"])
    log.flush_now()
    assert log.written == 1
    assert log.add_labels(model, [(ids[0], 1.0)]).accepted == [ids[0]]
    assert len(log.labelled(model, "1", 10)) == 1
    time.sleep(1.1)
    log._prune()
    assert log.add_labels(model, [(ids[0], 1.0), ("k", 2.0)]).unknown == [ids[0], "k"]
    assert log.labelled(model, "1", 10) == []


def test_the_registry_store_keeps_json_in_postgresql(postgres_url: str, model: str) -> None:
    """Inputs and outputs are real ``json`` columns: the data team can query them."""
    log = PredictionLog(DatabaseStore(postgres_url))
    log.open()
    log.open()  # idempotent
    rid, _ = new_ids(2)
    log.record(model, "1", rid, Batch({"x": np.array([1.5, np.nan]), "s": ["a", None]}, 2),
               Batch({"y": ["p", "q"]}, 2))
    log.flush_now()
    log.close()
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT pg_typeof(inputs)::text, inputs->'x'->>0, inputs->'s'->>1, "
                "outputs->'y'->>1 FROM prediction_batches WHERE rid = :rid"), {"rid": rid}).one()
            head = conn.execute(text("SELECT version_num FROM baton_predlog_version")).scalar()
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert tuple(row) == ("json", "1.5", None, "q")
    assert head == predlog_migration_head()  # the log's own schema, at its newest revision
    assert "alembic_version" not in tables  # and nothing of the registry's


def predlog_migration_head() -> str:
    from baton.monitor.predlog.store import MIGRATIONS

    return migration_head(MIGRATIONS)


def test_a_store_at_the_newest_revision_opens_without_alembic(tmp_path: Path) -> None:
    """Every ``baton serve`` opens the log: only the first start runs the migrations."""
    assert HEAD_REVISION == predlog_migration_head()
    path = tmp_path / "p.sqlite"
    store = DatabaseStore.local(path)
    store.open()  # the first open: Alembic creates the tables
    store.close()
    probe = ("import sys; from pathlib import Path; "
             "from baton.monitor.predlog.store import DatabaseStore; "
             f"s = DatabaseStore.local(Path({str(path)!r})); s.open(); s.close(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_an_unreachable_registry_database_is_a_clear_error_at_open() -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:5432/baton_no_such_database"
    log = PredictionLog(DatabaseStore(url))
    with pytest.raises(BatonError) as err:
        log.open()
    assert err.value.code == "PREDICTION_LOG_UNAVAILABLE"
    assert "baton_no_such_database" in err.value.message
    assert "secret" not in err.value.message and "BATON_REGISTRY_DB" in err.value.message


def test_a_failed_write_is_retried_and_nothing_is_exported_twice(
        postgres_url: str, model: str, tmp_path: Path) -> None:
    export = PredictionExport(f"file://{tmp_path}/copy.jsonl")
    log = PredictionLog(DatabaseStore(postgres_url), export=export)
    log.open()
    log.close()  # the store is gone: writes fail
    rid, _ = new_ids(2)
    log.record(model, "1", rid, batch([1.0, 2.0]), Batch({"y": [1, 2]}, 2))
    with pytest.raises(BatonError, match="closed"):
        log.flush_now()
    assert log.failures == 1 and log.written == 0 and log.describe()["pending"] == 1
    log.open()  # reachable again: the queued batch is written, and exported once
    log.flush_now()
    assert log.written == 2 and log.describe()["pending"] == 0
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"{rid}-0", f"{rid}-1"]


def test_the_export_writes_one_record_per_prediction(tmp_path: Path) -> None:
    export = PredictionExport(f"file://{tmp_path}/out/copy.jsonl")
    log = PredictionLog(tmp_path / "p.sqlite", export=export)
    log.open()
    rid, ids = new_ids(2)
    log.record("m", "1.0", rid, Batch({"x": np.array([1.0, np.nan]), "c": ["a", None],
                                       "t": np.array([[1, 2], [3, 4]])}, 2),
               Batch({"y": ["p", "q"]}, 2))
    stream_rid, stream_ids = new_ids(2)
    log.record("m", "1.0", stream_rid, batch([5.0, 6.0]), Batch({"y": ["r", "s"]}, 2),
               keys=["k1", None])
    log.flush_now()
    log.close()  # writes what the export holds
    lines = [json.loads(x) for x in (tmp_path / "out" / "copy.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [*ids, *stream_ids]
    first = lines[0]
    assert set(first) == {"id", "model", "version", "time", "input", "output"}
    assert (first["model"], first["version"]) == ("m", "1.0")
    assert abs(first["time"] - time.time()) < 60
    assert first["input"] == {"x": 1.0, "c": "a", "t": [1, 2]}
    assert lines[1]["input"] == {"x": None, "c": None, "t": [3, 4]}
    assert lines[1]["output"] == {"y": "q"}
    assert [x.get("key") for x in lines[2:]] == ["k1", None]  # no key: no "key"
    assert export.exported == 4 and export.dropped == 0 and export.pending == 0


def test_an_unreachable_sink_is_retried_with_a_bounded_buffer(tmp_path: Path) -> None:
    """A sink that refuses writes: records wait (up to the bound, the rest are dropped
    and counted) and are written once it accepts them; recording never waits."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the sink wants a folder")
    target = blocker / "copy.jsonl"
    export = PredictionExport(f"file://{target}", max_records=5, first_backoff=0.05,
                              max_backoff=0.1)
    log = PredictionLog(tmp_path / "p.sqlite", export=export)
    log.open()
    for _ in range(4):
        log.record("m", "1", new_ids(1)[0], batch([1.0, 2.0]), Batch({"y": [1, 2]}, 2))
    log.flush_now()
    # The store is not held back by the sink: all 8 are stored while the sink takes none.
    assert log.written == 8 and export.exported == 0
    assert export.dropped == 4 and export.pending == 4  # 2 batches kept, 2 dropped
    deadline = time.monotonic() + 10
    while export.failures < 2:
        assert time.monotonic() < deadline, "the export did not retry"
        time.sleep(0.02)
    assert "not-a-folder" in (export.last_error or "")
    blocker.unlink()  # the sink can be opened now
    while export.exported < 4:
        assert time.monotonic() < deadline, f"the export did not recover: {export.describe()}"
        time.sleep(0.02)
    log.close()
    assert len(target.read_text().splitlines()) == 4 and export.pending == 0


def test_what_the_sink_never_took_is_counted_at_shutdown(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    export = PredictionExport(f"file://{blocker}/copy.jsonl", first_backoff=0.05,
                              drain_timeout=0.3)
    log = PredictionLog(tmp_path / "p.sqlite", export=export)
    log.open()
    log.record("m", "1", new_ids(1)[0], batch([1.0, 2.0, 3.0]), Batch({"y": [1, 2, 3]}, 3))
    log.flush_now()
    log.close()  # gives up after drain_timeout: what the sink never took is dropped
    assert export.dropped == 3 and export.exported == 0 and export.pending == 0


def test_small_batches_share_one_block_and_their_ids_count_on(make_log: MakeLog,
                                                              model: str) -> None:
    """1-row requests cost the store one row per block, and each id still names its row."""
    from baton.monitor import predlog

    log = make_log()
    first = log.log(model, "1", batch([1.0]), Batch({"y": ["a"]}, 1))
    second = log.log(model, "1", batch([2.0, 3.0]), Batch({"y": ["b", "c"]}, 2),
                     keys=["cust-1", None])
    other_version = log.log(model, "2", batch([4.0]), Batch({"y": ["d"]}, 1))
    wider = log.log(model, "1", Batch({"x": np.array([5.0]), "z": np.array([1])}, 1),
                    Batch({"y": ["e"]}, 1))  # other columns: a block of its own
    block, _, _ = first[0].rpartition("-")
    assert first == [f"{block}-0"] and second == [f"{block}-1", f"{block}-2"]
    assert other_version[0].rpartition("-")[0] not in (block, wider[0].rpartition("-")[0])
    assert wider[0].rpartition("-")[0] != block
    log.flush_now()
    assert log.written == 5
    result = log.add_labels(model, [(first[0], "a"), (second[1], "x"), ("cust-1", "b"),
                                    (wider[0], "e")])
    assert result.accepted == [first[0], second[1], "cust-1", wider[0]]
    pairs = sorted(log.labelled(model, "1", 10), key=lambda p: p[1])
    assert pairs == [({"y": "a"}, "a"), ({"y": "b"}, "b"), ({"y": "e"}, "e"),
                     ({"y": "c"}, "x")]
    # A full block is sealed at once: the next rows start a new one.
    ids = [log.log(model, "1", batch([0.0] * 100), Batch({"y": ["f"] * 100}, 100))
           for _ in range(predlog.BLOCK_ROWS // 100 + 1)]
    blocks = [i[0].rpartition("-")[0] for i in ids]
    assert len(set(blocks)) == 2 and blocks[0] == blocks[-2] != blocks[-1]


def test_a_batch_that_is_not_sampled_still_gets_ids(make_log: MakeLog, model: str) -> None:
    log = make_log(sample=0.0)
    ids = log.log(model, "1", batch([1.0, 2.0]), Batch({"y": ["a", "b"]}, 2))
    assert len(set(ids)) == 2
    log.flush_now()
    assert log.written == 0 and log.add_labels(model, [(ids[0], "a")]).unknown == [ids[0]]
