"""Output records built a batch at a time are, byte for byte, those built one by one."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from baton.batch import Batch
from baton.streams.base import Message
from baton.streams.records import ModelIdentity, output_record, output_records

MODEL = ModelIdentity("logreg", "1.0.0", "d" * 64)


def _one_by_one(messages: list[Message], out: Batch, model: ModelIdentity,
                ids: list[str]) -> list[tuple[Any, ...]]:
    return [(r.key, r.value, r.headers) for r in
            (output_record(m, row, model, pid)
             for m, row, pid in zip(messages, out.to_records(), ids, strict=True))]


def _batched(messages: list[Message], out: Batch, model: ModelIdentity,
             ids: list[str]) -> list[tuple[Any, ...]]:
    return [(r.key, r.value, r.headers) for r in output_records(messages, out, model, ids)]


def _messages(keys: list[str | None]) -> list[Message]:
    return [Message(k, b"{}", i) for i, k in enumerate(keys)]


@pytest.mark.parametrize("columns", [
    {"prediction": np.array([0, 1, 1]), "proba_0": np.array([0.25, np.nan, 1e-300]),
     "proba_1": np.array([0.75, np.inf, 1.0], dtype=np.float32)},
    {"label": ["a,b", "null", 'q"uo,te'], "ok": [True, None, False]},
    {"vector": np.arange(6.0).reshape(3, 2), "nested": [{"a": 1, "b": [1, 2]}, {}, None]},
    {"%b": np.array([1, 2, 3]), "null": ["x", "y", "z"]},
])
def test_any_columns_encode_as_one_by_one(columns: dict[str, Any]) -> None:
    messages = _messages(["k,1", None, "ключ"])
    out, ids = Batch(columns, 3), ["a-0", "a,1", "a\"2"]
    assert _batched(messages, out, MODEL, ids) == _one_by_one(messages, out, MODEL, ids)


def test_a_model_name_with_null_or_percent_encodes_as_one_by_one() -> None:
    messages = _messages(["k1", "k2"])
    out, ids = Batch({"p": np.array([0.5, 0.25])}, 2), ["i0", "i1"]
    for model in (ModelIdentity("null", "1%s", "d"), ModelIdentity("m%b", "nullv", "d")):
        assert _batched(messages, out, model, ids) == _one_by_one(messages, out, model, ids)


def test_counts_that_do_not_match_are_refused() -> None:
    with pytest.raises(ValueError):
        output_records(_messages(["a"]), Batch({"p": np.array([1, 2])}, 2), MODEL, ["i", "j"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=6)),
                          st.one_of(st.none(), st.text(max_size=6), st.integers(-2**63, 2**64 - 1),
                                    st.floats(allow_nan=False), st.booleans()),
                          st.floats(allow_nan=True, allow_infinity=True)),
                min_size=1, max_size=8))
def test_generated_rows_encode_as_one_by_one(rows: list[tuple[Any, Any, float]]) -> None:
    messages = _messages([key for key, _, _ in rows])
    out = Batch({"any": [value for _, value, _ in rows],
                 "score": np.array([score for _, _, score in rows])}, len(rows))
    ids = [f"id,{i}" if i % 2 else f"id-{i}" for i in range(len(rows))]
    assert _batched(messages, out, MODEL, ids) == _one_by_one(messages, out, MODEL, ids)
