"""The prediction log on its own: request ids and stream keys, labels, windows, retention."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from baton.batch import Batch
from baton.monitor.predlog import PredictionLog, new_ids


def batch(values: list[float]) -> Batch:
    return Batch({"x": np.array(values)}, len(values))


def test_labels_join_by_prediction_ids_and_by_stream_keys(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite")
    log.open()
    rid, ids = new_ids(2)
    log.record("m", "1", rid, batch([1.0, 2.0]), Batch({"y": ["a", "b"]}, 2))
    stream_rid, stream_ids = new_ids(2)
    log.record("m", "1", stream_rid, batch([3.0, np.nan]), Batch({"y": ["c", "d"]}, 2),
               keys=["k-7", "order:42"])
    log.flush_now()
    result = log.add_labels("m", [(ids[1], "b"), ("order:42", "x"), (f"{rid}-9", "z"),
                                  ("nope", "z"), ("k-7", "c")])
    assert result.accepted == [ids[1], "order:42", "k-7"]  # "k-7" is a key, not an id
    assert result.unknown == [f"{rid}-9", "nope"]
    # The same prediction, named by its key or by its id: labelled once only.
    again = log.add_labels("m", [("order:42", "y"), (stream_ids[1], "y")])
    assert again.duplicates == ["order:42", stream_ids[1]]
    assert log.add_labels("other-model", [(ids[0], "a")]).unknown == [ids[0]]
    pairs = sorted(log.labelled("m", "1", 10), key=lambda p: p[0]["y"])
    assert pairs == [({"y": "b"}, "b"), ({"y": "c"}, "c"), ({"y": "d"}, "x")]
    assert log.labelled("m", "2", 10) == []
    log.close()


def test_a_repeated_key_names_its_latest_prediction(tmp_path: Path) -> None:
    """Keys name entities: each new event of a key can be labelled, earlier ones by id."""
    log = PredictionLog(tmp_path / "p.sqlite")
    log.open()
    first, first_ids = new_ids(1)
    log.record("m", "1", first, batch([1.0]), Batch({"y": ["early"]}, 1), keys=["cust-3"])
    log.flush_now()
    assert log.add_labels("m", [("cust-3", "L1")]).accepted == ["cust-3"]
    second, _ = new_ids(1)
    log.record("m", "1", second, batch([2.0]), Batch({"y": ["late"]}, 1), keys=["cust-3"])
    log.flush_now()
    assert log.add_labels("m", [("cust-3", "L2")]).accepted == ["cust-3"]
    assert log.add_labels("m", [(first_ids[0], "L3")]).duplicates == [first_ids[0]]
    pairs = sorted(log.labelled("m", "1", 10), key=lambda p: p[1])
    assert pairs == [({"y": "early"}, "L1"), ({"y": "late"}, "L2")]
    log.close()


def test_sampling_and_retention(tmp_path: Path) -> None:
    off = PredictionLog(tmp_path / "off.sqlite", sample=0.0)
    off.open()
    off.record("m", "1", new_ids(1)[0], batch([1.0]), Batch({"y": [1]}, 1))
    off.flush_now()
    assert off.written == 0
    log = PredictionLog(tmp_path / "p.sqlite", retention_days=1 / 86400)  # one second
    log.open()
    rid, ids = new_ids(1)
    log.record("m", "1", rid, batch([1.0]), Batch({"y": [1.0]}, 1))
    log.flush_now()
    assert log.written == 1
    time.sleep(1.1)
    log._prune()
    assert log.add_labels("m", [(ids[0], 1.0)]).unknown == [ids[0]]
