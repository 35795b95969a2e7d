"""Whole-column contract checks for file inputs (CSV, Parquet, JSON Lines), no per-row Python.

Each field's Arrow column is parsed (text -> numbers by Arrow's own parser), then checked
with numpy masks: type, null, infinity, min/max, categories. Rows that fail any check are
set aside with the field, what was expected and what came; the rest become the columns a
worker receives (see ``baton.contract.validate.to_column``). Text that does not parse takes
a slower path that is still vectorised: a regular expression that mirrors Arrow's parser
finds the bad cells, and a bisection is the last resort if the two ever disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from baton.batch import Batch, Column
from baton.contract.spec import FieldSpec
from baton.contract.validate import as_text, describe, shown
from baton.errors import ContractViolation
from baton.scoring.base import DeadRow

#: Cell texts read as a missing value: pandas' defaults (``read_csv``'s ``na_values``). In a
#: CSV only unquoted cells are; the empty cell always is (docs/cli.md#baton-score).
NULL_TOKENS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
               "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
_FLOAT = (r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
          r"|[Ii][Nn][Ff](?:[Ii][Nn][Ii][Tt][Yy])?|[Nn][Aa][Nn])$")
_INT = r"^-?[0-9]+$"
_BOOL = r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$"
_EXACT = 2.0**53  # integral floats above this are not trusted to be the integer meant


@dataclass
class _Field:
    """One field's checked column: the values, and the rows that failed with the reason."""

    values: np.ndarray | pa.Array
    problems: list[tuple[np.ndarray, str]] = field(default_factory=list)
    bad: np.ndarray | None = None

    def fail(self, mask: np.ndarray, why: str) -> None:
        if self.bad is not None:
            mask = mask & ~self.bad
        if mask.any():
            self.problems.append((mask, why))
            self.bad = mask if self.bad is None else self.bad | mask


@dataclass
class CheckedRows:
    batch: Batch | None
    good: np.ndarray | None  # None: every row is good
    dead: list[DeadRow]


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return _mask(arr.is_valid())


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _is_text(arr: pa.Array) -> bool:
    return bool(pa.types.is_string(arr.type))


def _nullify(arr: pa.Array, tokens: Sequence[str]) -> pa.Array:
    """Text cells that spell a missing value become nulls."""
    hit = pc.is_in(arr, value_set=pa.array(tokens, pa.string()))
    if not pc.any(hit).as_py():
        return arr
    return pc.if_else(hit, pa.scalar(None, pa.string()), arr)


def _parse(arr: pa.Array, to: pa.DataType, pattern: str) -> tuple[pa.Array, np.ndarray | None]:
    """Text -> ``to`` with Arrow's parser; the cells it cannot read come back as a mask."""
    try:
        return arr.cast(to), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.match_substring_regex(arr, pattern)
    bad = _valid(arr) & ~_mask(ok.fill_null(True))
    cleaned = pc.if_else(ok, arr, pa.scalar(None, pa.string()))
    try:
        return cleaned.cast(to), bad
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values, more = _bisect(cleaned, to)
        return values, bad | more


def _bisect(arr: pa.Array, to: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast what casts; the single cells that do not are nulls, flagged in the mask."""
    try:
        return arr.cast(to), np.zeros(len(arr), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) == 1:
            return pa.nulls(1, to), np.ones(1, dtype=bool)
    mid = len(arr) // 2
    (a, ma), (b, mb) = _bisect(arr.slice(0, mid), to), _bisect(arr.slice(mid), to)
    return pa.concat_arrays([a, b]), np.concatenate([ma, mb])


def _floats(spec: FieldSpec, arr: pa.Array, nulls: Sequence[str]) -> _Field:
    t = arr.type
    out = _Field(np.empty(0))
    if _is_text(arr):
        nums, bad = _parse(_nullify(arr, nulls), pa.float64(), _FLOAT)
        if bad is not None:
            out.fail(bad, "not a number")
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        nums = arr.cast(pa.float64(), safe=False)
    else:
        if not pa.types.is_null(t):
            out.fail(_valid(arr), f"expected a number, got {t}")
        nums = pa.nulls(len(arr), pa.float64())
    x = np.asarray(nums.to_numpy(zero_copy_only=False), dtype=np.float64)
    out.values = x
    _numeric_checks(spec, out, x, np.isnan(x))
    return out


def _numeric_checks(spec: FieldSpec, out: _Field, x: np.ndarray, null: np.ndarray) -> None:
    if not spec.nullable:
        out.fail(null, "missing value (the field is not nullable)")
    if x.dtype.kind == "f":
        out.fail(np.isinf(x), "infinite value")
    if spec.min is not None:
        out.fail((x < spec.min) & ~null, f"below min {spec.min}")
    if spec.max is not None:
        out.fail((x > spec.max) & ~null, f"above max {spec.max}")
    if spec.categories is not None:
        out.fail(~np.isin(x, np.array(spec.categories)) & ~null, "not an allowed category")


def _integers(spec: FieldSpec, arr: pa.Array, nulls: Sequence[str]) -> _Field:
    t = arr.type
    out = _Field(np.empty(0))
    if _is_text(arr):
        arr = _nullify(arr, nulls)
        try:
            ints: pa.Array = arr.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ints = _integral_text(arr, out)
    elif pa.types.is_integer(t):
        ints, bad = _bisect(arr, pa.int64())  # only uint64 can fail
        out.fail(bad, "not a 64-bit integer")
    elif pa.types.is_floating(t) or pa.types.is_decimal(t):
        ints = _integral_floats(arr.cast(pa.float64(), safe=False), out)
    else:
        if not pa.types.is_null(t):
            out.fail(_valid(arr), f"expected an integer, got {t}")
        ints = pa.nulls(len(arr), pa.int64())
    null = ~_valid(ints)
    values = np.asarray(ints.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    _numeric_checks(spec, out, values, null)
    if spec.nullable:
        as_float = values.astype(np.float64)
        as_float[null] = np.nan
        out.values = as_float
    else:
        out.values = values
    return out


def _integral_text(arr: pa.Array, out: _Field) -> pa.Array:
    """Integers written as integers, or as integral decimals ("3.0": pandas writes those)."""
    is_int = _mask(pc.match_substring_regex(arr, _INT).fill_null(False))
    ints, bad_int = _bisect(pc.if_else(is_int, arr, pa.scalar(None, pa.string())), pa.int64())
    rest = _valid(arr) & ~is_int
    if not rest.any() and not bad_int.any():
        return ints
    nums, bad = _parse(pc.if_else(rest, arr, pa.scalar(None, pa.string())), pa.float64(), _FLOAT)
    floats = _integral_floats(nums, out, bad)
    out.fail(bad_int, "not a 64-bit integer")
    return pc.if_else(pa.array(is_int), ints, floats)


def _integral_floats(nums: pa.Array, out: _Field, unreadable: np.ndarray | None = None
                     ) -> pa.Array:
    f = np.asarray(nums.to_numpy(zero_copy_only=False), dtype=np.float64)
    present = ~np.isnan(f)
    with np.errstate(invalid="ignore"):
        wrong = present & ((f != np.floor(f)) | (np.abs(f) >= _EXACT))
    if unreadable is not None:
        wrong |= unreadable
    out.fail(wrong, "not an integer")
    keep = present & ~wrong
    ints = np.where(keep, f, 0).astype(np.int64)
    return pa.array(ints, mask=~keep)


def _booleans(spec: FieldSpec, arr: pa.Array, nulls: Sequence[str]) -> _Field:
    t = arr.type
    out = _Field(np.empty(0))
    if _is_text(arr):
        flags, bad = _parse(_nullify(arr, nulls), pa.bool_(), _BOOL)
        if bad is not None:
            out.fail(bad, "not a boolean")
    elif pa.types.is_boolean(t):
        flags = arr
    else:
        if not pa.types.is_null(t):
            out.fail(_valid(arr), f"expected a boolean, got {t}")
        flags = pa.nulls(len(arr), pa.bool_())
    if not spec.nullable:
        out.fail(~_valid(flags), "missing value (the field is not nullable)")
        out.values = np.asarray(flags.fill_null(False).to_numpy(zero_copy_only=False),
                                dtype=bool)
    else:
        out.values = flags
    return out


def _strings(spec: FieldSpec, arr: pa.Array, nulls: Sequence[str]) -> _Field:
    # Text is taken as it came: the CSV reader has already made its null cells nulls, and
    # an empty string in JSON or Parquet is an empty string, as on the HTTP path.
    out = _Field(arr)
    if not _is_text(arr):
        if not pa.types.is_null(arr.type):
            out.fail(_valid(arr), f"expected text, got {arr.type}")
        arr = pa.nulls(len(arr), pa.string())
    null = ~_valid(arr)
    if not spec.nullable:
        out.fail(null, "missing value (the field is not nullable)")
    if spec.categories is not None:
        allowed = pc.is_in(arr, value_set=pa.array(spec.categories, pa.string()))
        out.fail(~null & ~_mask(allowed.fill_null(False)), "not an allowed category")
    out.values = arr
    return out


_CHECKS = {"float": _floats, "integer": _integers, "boolean": _booleans, "string": _strings}


def check_column(spec: FieldSpec, arr: pa.Array | pa.ChunkedArray,
                 nulls: Sequence[str] = NULL_TOKENS) -> _Field:
    """Parse and check one column against ``spec``; in a text column of numbers or
    booleans, the cells spelt as one of ``nulls`` are missing values."""
    return _CHECKS[spec.type](spec, _plain(arr), nulls)


def _worker_column(spec: FieldSpec, values: np.ndarray | pa.Array, good: np.ndarray | None
                   ) -> Column:
    """The column a worker receives, in ``to_column``'s conventions."""
    if isinstance(values, np.ndarray):
        kept: np.ndarray = values if good is None else values[good]
        if spec.type == "integer" and spec.categories is not None and not spec.nullable:
            return list(kept.tolist())
        return kept
    if good is not None:
        values = values.filter(pa.array(good))
    return list(values.to_pylist())


def check_table(specs: Sequence[FieldSpec], table: pa.Table, rows: np.ndarray,
                keys: pa.Array, payload: Callable[[int], bytes],
                nulls: Sequence[str] = NULL_TOKENS) -> CheckedRows:
    """Check every field of ``table``; rows that fail become dead rows (stage ``contract``).

    ``rows`` holds each row's input row number, ``keys`` its id, ``payload(i)`` row ``i``
    as read (for its dead letter).
    """
    checked = [check_column(spec, table.column(spec.name), nulls) for spec in specs]
    bad_rows = np.zeros(table.num_rows, dtype=bool)
    for c in checked:
        if c.bad is not None:
            bad_rows |= c.bad
    good = ~bad_rows if bad_rows.any() else None
    dead = _dead_rows(specs, checked, table, rows, keys, payload, np.flatnonzero(bad_rows))
    n = table.num_rows if good is None else int(good.sum())
    batch = Batch({s.name: _worker_column(s, c.values, good)
                   for s, c in zip(specs, checked, strict=True)}, n) if n else None
    return CheckedRows(batch, good, dead)


def row_payload(table: pa.Table, i: int) -> bytes:
    """Row ``i`` of ``table`` as a JSON object: the payload of its dead letter."""
    return orjson.dumps(table.slice(i, 1).to_pylist()[0], default=str)


def _dead_rows(specs: Sequence[FieldSpec], checked: list[_Field], table: pa.Table,
               rows: np.ndarray, keys: pa.Array, payload: Callable[[int], bytes],
               bad: np.ndarray) -> list[DeadRow]:
    out = []
    for i in bad.tolist():
        violations: list[dict[str, Any]] = []
        for spec, c in zip(specs, checked, strict=True):
            for mask, why in c.problems:
                if mask[i]:
                    got = shown(table.column(spec.name)[i].as_py())
                    violations.append({"record": int(rows[i]), "field": spec.name,
                                       "expected": describe(spec), "got": got,
                                       "message": why})
        first = violations[0]
        err = ContractViolation(
            f"input contract violated at row {first['record']}, field {first['field']!r}: "
            f"{first['message']}; expected {first['expected']}, got {as_text(first['got'])}",
            violations=violations)
        out.append(DeadRow(int(rows[i]), keys[i].as_py(), "contract", err, payload(i)))
    return out
