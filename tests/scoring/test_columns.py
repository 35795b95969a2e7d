"""Whole-column checks: what each field type accepts from text (CSV) and from typed columns
(Parquet, JSON), and what it reports for the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from baton.contract.spec import FieldSpec
from baton.scoring.columns import check_column, check_table


def problems(spec: FieldSpec, arr: pa.Array) -> dict[int, str]:
    checked = check_column(spec, arr)
    out: dict[int, str] = {}
    for mask, why in checked.problems:
        for i in np.flatnonzero(mask).tolist():
            out.setdefault(i, why)
    return out


def test_float_text() -> None:
    spec = FieldSpec("x", "float", min=-10.0, max=10.0)
    arr = pa.array(["1.5", "abc", "", "NA", "nan", "1e999", "-inf", "11", "-10", " 2", "+.5",
                    "1e1", "0x1"])
    assert problems(spec, arr) == {
        1: "not a number", 2: "missing value (the field is not nullable)",
        3: "missing value (the field is not nullable)",
        4: "missing value (the field is not nullable)", 5: "infinite value",
        6: "infinite value", 7: "above max 10.0", 9: "not a number", 12: "not a number"}
    values = check_column(spec, arr).values
    assert values[0] == 1.5 and values[8] == -10.0 and values[10] == 0.5 and values[11] == 10


def test_nullable_float_and_typed_columns() -> None:
    spec = FieldSpec("x", "float", nullable=True)
    assert problems(spec, pa.array([1.0, None, float("nan")])) == {}
    assert problems(spec, pa.array([1, 2, None], pa.int32())) == {}
    assert problems(spec, pa.array([True, None])) == {0: "expected a number, got bool"}
    assert np.isnan(check_column(spec, pa.array(["", "2"])).values[0])


def test_integer_text_and_typed() -> None:
    spec = FieldSpec("n", "integer", min=0, max=100)
    arr = pa.array(["3", "4.0", "3.5", "-1", "abc", "", "99999999999999999999", "+5", "101"])
    assert problems(spec, arr) == {2: "not an integer", 3: "below min 0", 4: "not an integer",
                                   5: "missing value (the field is not nullable)",
                                   6: "not a 64-bit integer", 8: "above max 100"}
    values = check_column(spec, arr).values
    assert values.dtype == np.int64 and values[:2].tolist() == [3, 4] and values[7] == 5
    assert problems(spec, pa.array([1.0, 2.5, None])) == {
        1: "not an integer", 2: "missing value (the field is not nullable)"}
    assert problems(spec, pa.array([2**64 - 1, 5], pa.uint64())) == {0: "not a 64-bit integer"}
    nullable = check_column(FieldSpec("n", "integer", nullable=True), pa.array(["1", ""]))
    assert nullable.values.dtype == np.float64 and np.isnan(nullable.values[1])


def test_boolean_and_string() -> None:
    flags = FieldSpec("b", "boolean")
    assert problems(flags, pa.array(["true", "FALSE", "1", "0", "yes", ""])) == {
        4: "not a boolean", 5: "missing value (the field is not nullable)"}
    assert problems(flags, pa.array([1, 0])) == {0: "expected a boolean, got int64",
                                                 1: "expected a boolean, got int64"}
    kind = FieldSpec("k", "string", categories=("a", "b"))
    # Text is taken as it came ("" is the empty string, as on the HTTP path): a CSV's null
    # cells are nulls already, read so by the CSV reader.
    assert problems(kind, pa.array(["a", "c", "", None])) == {
        1: "not an allowed category", 2: "not an allowed category",
        3: "missing value (the field is not nullable)"}
    # A null in a nullable field with categories is allowed, not "not an allowed category".
    assert problems(FieldSpec("k", "string", nullable=True, categories=("a", "b")),
                    pa.array(["a", None, ""])) == {2: "not an allowed category"}
    assert problems(kind, pa.array(["a", "b"]).dictionary_encode()) == {}
    assert problems(FieldSpec("s", "string"), pa.array([1, 2])) == {
        0: "expected text, got int64", 1: "expected text, got int64"}


@pytest.mark.parametrize(("spec", "values", "worker"), [
    (FieldSpec("x", "float"), ["1.5", "2"], np.array([1.5, 2.0])),
    (FieldSpec("n", "integer"), ["1", "2"], np.array([1, 2])),
    (FieldSpec("n", "integer", categories=(1, 2)), ["1", "2"], [1, 2]),
    (FieldSpec("b", "boolean"), ["true", "0"], np.array([True, False])),
    (FieldSpec("b", "boolean", nullable=True), ["true", ""], [True, None]),
    (FieldSpec("s", "string", nullable=True), ["a", None], ["a", None]),
    (FieldSpec("s", "string", nullable=True), ["a", ""], ["a", ""]),
])
def test_columns_reach_the_worker_as_the_http_path_sends_them(spec: FieldSpec, values: list[str],
                                                              worker: Any) -> None:
    table = pa.table({spec.name: pa.array(values)})
    checked = check_table([spec], table, np.arange(2), pa.array([0, 1]), lambda i: b"")
    assert checked.batch is not None
    col = checked.batch.columns[spec.name]
    if isinstance(worker, np.ndarray):
        assert isinstance(col, np.ndarray) and col.dtype == worker.dtype
        assert col.tolist() == worker.tolist()
    else:
        assert col == worker


def test_a_row_failing_several_fields_lists_each() -> None:
    specs = [FieldSpec("x", "float", max=1.0), FieldSpec("k", "string", categories=("a",))]
    table = pa.table({"x": ["5", "0.5", "0.1"], "k": ["z", "a", "a"]})
    checked = check_table(specs, table, np.array([10, 11, 12]), pa.array(["r10", "r11", "r12"]),
                          lambda i: f"row{i}".encode())
    assert checked.good is not None and checked.good.tolist() == [False, True, True]
    [dead] = checked.dead
    assert dead.row == 10 and dead.key == "r10" and dead.payload == b"row0"
    assert [v["field"] for v in dead.error.violations] == ["x", "k"]  # type: ignore[attr-defined]
    assert "row 10, field 'x': above max 1.0" in dead.error.message
    assert checked.batch is not None and checked.batch.rows == 2
