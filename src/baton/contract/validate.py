"""Enforce a contract on every record in and out.

Inputs are decoded and checked in one pass by msgspec types built from the contract
(strict types, ranges, categories, required and unknown fields); numeric columns become
numpy arrays. Outputs coming back from a worker are checked column by column with numpy.
A violation names the record index, the field, what was expected and what came.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from baton.batch import Batch, Column
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.errors import ContractViolation, RequestError

_INT64 = (-(2**63), 2**63 - 1)
#: Characters of an offending value (or of a validator's message) a violation shows: a
#: 7 MB field must not come back as a 21 MB error body.
MAX_SHOWN = 200
_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_INDEX = re.compile(r"^\[(\d+)\](?:\.(.+))?$")


def describe(spec: FieldSpec) -> str:
    """What a field accepts, in words: ``float in [0, 1], or null``."""
    text = spec.type
    if spec.categories is not None:
        text += " one of " + ", ".join(repr(c) for c in spec.categories)
    if spec.min is not None and spec.max is not None:
        text += f" in [{spec.min}, {spec.max}]"
    elif spec.min is not None:
        text += f" >= {spec.min}"
    elif spec.max is not None:
        text += f" <= {spec.max}"
    return text + (", or null" if spec.nullable else ", not null")


def value_type(spec: FieldSpec) -> Any:
    """The msgspec type that accepts exactly the values a field allows."""
    base: Any
    if spec.categories is not None:
        base = Literal[tuple(spec.categories)]
    elif spec.type == "float":
        base = Annotated[float, msgspec.Meta(ge=spec.min, le=spec.max)] \
            if spec.min is not None or spec.max is not None else float
    elif spec.type == "integer":
        lo = _INT64[0] if spec.min is None else spec.min
        hi = _INT64[1] if spec.max is None else spec.max
        base = Annotated[int, msgspec.Meta(ge=lo, le=hi)]
    elif spec.type == "boolean":
        base = bool
    else:
        base = str
    return base | None if spec.nullable else base


#: A field's column decoder, by the field's identity (the field itself is kept, so its id
#: cannot be reused): building one costs ~10 µs, far more than decoding 100 values.
_DECODERS: dict[int, tuple[FieldSpec, msgspec.json.Decoder[list[Any]]]] = {}


def column_decoder(spec: FieldSpec) -> msgspec.json.Decoder[list[Any]]:
    """The msgspec decoder of a JSON list of ``spec``'s values, made once per field."""
    hit = _DECODERS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_DECODERS) > 4096:  # fields of versions long gone
        _DECODERS.clear()
    decoder = msgspec.json.Decoder(list[value_type(spec)])  # type: ignore[misc]
    _DECODERS[id(spec)] = (spec, decoder)
    return decoder


def to_column(spec: FieldSpec, values: list[Any]) -> Column:
    """Values already checked against ``spec`` -> the column a worker receives."""
    if spec.type == "float" or (spec.type == "integer" and spec.nullable):
        return np.array(values, dtype=np.float64)
    if spec.type == "integer" and spec.categories is None:
        return np.array(values, dtype=np.int64)
    if spec.type == "boolean" and not spec.nullable:
        return np.array(values, dtype=np.bool_)
    return values


def _violation(index: int | None, field: str | None, expected: str, got: Any,
               message: str) -> dict[str, Any]:
    return {"record": index, "field": None if field is None else _cut(field),
            "expected": expected, "got": shown(got), "message": _cut(message)}


def _cut(text: str, what: str = "characters") -> str:
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN]}... ({len(text):,} {what}, cut to {MAX_SHOWN})"


def shown(value: Any) -> Any:
    """An offending value as a violation's ``got`` shows it: long text and large JSON
    values are cut to :data:`MAX_SHOWN` characters, and say so."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list | dict):
        text = json.dumps(value, default=str)
        return value if len(text) <= MAX_SHOWN else _cut(text, "characters of JSON")
    return value


def as_text(value: Any) -> str:
    """A value in a violation's message, in JSON's words: ``null``, ``true``, ``'DE'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class RecordsDecoder:
    """Decodes a JSON list of records into a checked :class:`Batch`."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.fields: list[FieldSpec] = list(contract.inputs)
        attrs = []
        for i, spec in enumerate(self.fields):
            t = value_type(spec)
            attrs.append((f"f{i}", t, None) if spec.nullable else (f"f{i}", t))
        record = msgspec.defstruct(
            "Record", attrs, kw_only=True, array_like=False,
            forbid_unknown_fields=contract.unknown_fields == "reject",
            rename={f"f{i}": s.name for i, s in enumerate(self.fields)})
        self._decoder = msgspec.json.Decoder(list[record])  # type: ignore[valid-type]
        self._by_name = {s.name: s for s in self.fields}

    def decode(self, body: bytes) -> Batch:
        try:
            records = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise self._explain(body, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise RequestError(f"request body is not valid JSON: {exc}",
                               code="INVALID_JSON") from None
        if not records:
            raise RequestError("request body is an empty list: send at least one record",
                               code="EMPTY_REQUEST")
        columns = zip(*map(msgspec.structs.astuple, records), strict=True)
        batch = Batch({s.name: to_column(s, list(v))
                       for s, v in zip(self.fields, columns, strict=True)}, len(records))
        return batch

    def _explain(self, body: bytes, text: str) -> Exception:
        m = _PATH.match(text)
        msg, path = (m.group("msg"), m.group("path") or "") if m else (text, "")
        if path == "" and "Expected `array`" in msg:
            return RequestError("request body must be a JSON list of records", code="BAD_SHAPE")
        im = _INDEX.match(path)
        if not im:
            return ContractViolation(f"input contract violated: {msg}",
                                     violations=[_violation(None, None, "", None, msg)])
        index, field = int(im.group(1)), im.group(2)
        unknown = re.search(r"unknown field `(.+)`", msg)
        missing = re.search(r"missing required field `(.+)`", msg)
        if unknown:
            field = unknown.group(1)
            v = _violation(index, field, "no such field (contract rejects unknown fields)",
                           _lookup(body, index, field), f"unknown field {field!r}")
        elif missing:
            field = missing.group(1)
            spec = self._by_name[field]
            v = _violation(index, field, describe(spec), None, f"missing field {field!r}")
        elif field is None:
            v = _violation(index, None, "a JSON object (record)", _lookup(body, index, None), msg)
        else:
            known = self._by_name.get(field)
            got = _lookup(body, index, field)
            v = _violation(index, field, describe(known) if known else "", got, msg)
        where = f"record {index}" + (f", field {v['field']!r}" if field else "")
        return ContractViolation(f"input contract violated at {where}: expected {v['expected']},"
                                 f" got {as_text(v['got'])}", violations=[v])


def _lookup(body: bytes, index: int, field: str | None) -> Any:
    """The offending value, read again on the error path only."""
    try:
        record = _reparse(body)[index]
        return record if field is None else record.get(field)
    except Exception:
        return None


def _reparse(body: bytes) -> Any:
    # The standard library, not orjson: orjson refuses numbers beyond float range
    # (1e999) and rounds huge integers; the sender should see what they sent.
    return json.loads(body, parse_float=_float_or_text)


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


# -- Columns (Open Inference Protocol inputs for a records contract) -----------------------

def decode_field_column(spec: FieldSpec, raw: bytes, rows: int) -> Column:
    """Decode one V2 input holding a whole column of a records contract."""
    try:
        values = column_decoder(spec).decode(raw)
    except msgspec.ValidationError as exc:
        m = _PATH.match(str(exc))
        msg, path = (m.group("msg"), m.group("path") or "") if m else (str(exc), "")
        im = re.match(r"^\[(\d+)\]", path)
        index = int(im.group(1)) if im else None
        got = None
        if index is not None:
            got = _reparse(raw)[index]
        v = _violation(index, spec.name, describe(spec), got, msg)
        raise ContractViolation(
            f"input contract violated at record {index}, field {spec.name!r}: "
            f"expected {describe(spec)}, got {as_text(v['got'])}", violations=[v]) from None
    if len(values) != rows:
        raise ContractViolation(
            f"input {spec.name!r} has {len(values)} values, other inputs have {rows}",
            violations=[_violation(None, spec.name, f"{rows} values", len(values),
                                   "inputs differ in length")])
    return to_column(spec, values)


# -- Outputs -------------------------------------------------------------------------------

def check_outputs(contract: Contract, batch: Batch, rows: int) -> None:
    """Raise :class:`ContractViolation` (direction ``output``) if a worker's result is wrong."""
    problems: list[dict[str, Any]] = []
    names = contract.output_names
    missing = [n for n in names if n not in batch.columns]
    if missing:
        problems.append(_violation(None, ", ".join(missing), "present", "absent",
                                   f"model output lacks {', '.join(missing)}"))
    for spec in contract.outputs:
        col = batch.columns.get(spec.name)
        if col is None:
            continue
        if len(col) != rows:
            problems.append(_violation(None, spec.name, f"{rows} rows", len(col),
                                       "output row count differs from input"))
            continue
        check = _check_field_output if isinstance(spec, FieldSpec) else _check_tensor_output
        problem = check(spec, col)
        if problem:
            problems.append(problem)
    if problems:
        first = problems[0]
        raise ContractViolation(
            f"output contract violated: {first['message']}"
            + (f" (record {first['record']}, field {first['field']!r})"
               if first["record"] is not None else f" (field {first['field']!r})"),
            violations=problems, direction="output")


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_field_output(spec: FieldSpec, col: Column) -> dict[str, Any] | None:
    want = describe(spec)
    if isinstance(col, np.ndarray) and col.dtype.kind in "fiub":
        kind = col.dtype.kind
        if spec.type == "string" or (spec.type == "boolean" and kind != "b") \
                or (spec.type in ("float", "integer") and kind == "b"):
            return _violation(0, spec.name, want, col[0].item(), f"expected {spec.type} values")
        if spec.type == "integer" and kind == "f":
            finite = col[~np.isnan(col)]
            if finite.size and not np.all(finite == np.floor(finite)):
                bad = _first_bad((col != np.floor(col)) & ~np.isnan(col))
                return _violation(bad, spec.name, want, col[bad].item(), "expected integers")
        if kind == "f":
            nan = np.isnan(col)
            if nan.any() and not spec.nullable:
                return _violation(_first_bad(nan), spec.name, want, None, "null (NaN) not allowed")
            if np.isinf(col).any():
                bad = _first_bad(np.isinf(col))
                return _violation(bad, spec.name, want, col[bad].item(), "infinite value")
        if spec.min is not None and (col < spec.min).any():
            bad = _first_bad(col < spec.min)
            return _violation(bad, spec.name, want, col[bad].item(), f"below min {spec.min}")
        if spec.max is not None and (col > spec.max).any():
            bad = _first_bad(col > spec.max)
            return _violation(bad, spec.name, want, col[bad].item(), f"above max {spec.max}")
        if spec.categories is not None:
            bad_mask = ~np.isin(col, np.array(spec.categories))
            if bad_mask.any():
                bad = _first_bad(bad_mask)
                return _violation(bad, spec.name, want, col[bad].item(), "not an allowed category")
        return None
    values = col.tolist() if isinstance(col, np.ndarray) else col
    try:
        msgspec.convert(values, type=list[value_type(spec)], strict=True)  # type: ignore[misc]
    except msgspec.ValidationError as exc:
        m = re.search(r"`\$\[(\d+)\]", str(exc))
        index = int(m.group(1)) if m else None
        got = values[index] if index is not None else None
        return _violation(index, spec.name, want, got, str(exc).split(" - at ")[0])
    return None


def _check_tensor_output(spec: TensorSpec, col: Column) -> dict[str, Any] | None:
    if not isinstance(col, np.ndarray):
        return _violation(None, spec.name, spec.datatype, "a list", "expected a tensor")
    return tensor_problem(spec, col)


def tensor_problem(spec: TensorSpec, arr: np.ndarray) -> dict[str, Any] | None:
    """Shape and datatype check of one tensor against its spec; ``None`` if it conforms."""
    want_shape = list(spec.shape)
    if arr.ndim != len(want_shape) or any(w != -1 and w != g for w, g in
                                          zip(want_shape, arr.shape, strict=True)):
        return _violation(None, spec.name, f"shape {want_shape}", list(arr.shape),
                          f"tensor {spec.name!r} has shape {list(arr.shape)}, "
                          f"expected {want_shape}")
    want = np.dtype(spec.dtype)
    if spec.datatype != "BYTES" and arr.dtype != want and not np.can_cast(arr.dtype, want,
                                                                           "same_kind"):
        return _violation(None, spec.name, spec.datatype, str(arr.dtype),
                          f"tensor {spec.name!r} has dtype {arr.dtype}, expected {spec.datatype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return _violation(None, spec.name, "finite numbers", "NaN or infinity",
                          f"tensor {spec.name!r} holds NaN or infinity")
    return None
