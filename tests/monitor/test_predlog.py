"""The prediction log on its own: request ids and stream keys, labels, windows, retention."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from baton.batch import Batch
from baton.monitor.predlog import PredictionLog, new_ids


def batch(values: list[float]) -> Batch:
    return Batch({"x": np.array(values)}, len(values))


def test_labels_join_by_request_ids_and_by_stream_keys(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite")
    log.open()
    rid, ids = new_ids(2)
    log.record("m", "1", ids, batch([1.0, 2.0]), Batch({"y": ["a", "b"]}, 2), rid)
    log.record("m", "1", ["k-7", "order:42"], batch([3.0, np.nan]),
               Batch({"y": ["c", "d"]}, 2))
    log.flush_now()
    result = log.add_labels("m", [(ids[1], "b"), ("order:42", "x"), (f"{rid}-9", "z"),
                                  ("nope", "z")])
    assert result.accepted == [ids[1], "order:42"]
    assert result.unknown == [f"{rid}-9", "nope"]
    assert log.add_labels("m", [("order:42", "y")]).duplicates == ["order:42"]
    assert log.add_labels("other-model", [(ids[0], "a")]).unknown == [ids[0]]
    pairs = sorted(log.labelled("m", "1", 10), key=lambda p: p[0]["y"])
    assert pairs == [({"y": "b"}, "b"), ({"y": "d"}, "x")]
    assert log.labelled("m", "2", 10) == []
    log.close()


def test_sampling_and_retention(tmp_path: Path) -> None:
    off = PredictionLog(tmp_path / "off.sqlite", sample=0.0)
    off.open()
    off.record("m", "1", ["a"], batch([1.0]), Batch({"y": [1]}, 1))
    off.flush_now()
    assert off.written == 0
    log = PredictionLog(tmp_path / "p.sqlite", retention_days=1 / 86400)  # one second
    log.open()
    rid, ids = new_ids(1)
    log.record("m", "1", ids, batch([1.0]), Batch({"y": [1.0]}, 1), rid)
    log.flush_now()
    assert log.written == 1
    time.sleep(1.1)
    log._prune()
    assert log.add_labels("m", [(ids[0], 1.0)]).unknown == [ids[0]]
