"""The Open Inference Protocol (V2) REST codec: request bodies to batches and back."""

from __future__ import annotations

import functools
import math
from typing import Any

import msgspec
import numpy as np
import orjson

from baton.batch import Batch, Column
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.contract.validate import decode_field_column, tensor_problem
from baton.errors import ContractViolation, RequestError

_FIELD_DATATYPE = {"float": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}
_ACCEPTS = {
    "float": ("FP", "INT", "UINT"), "integer": ("INT", "UINT"), "boolean": ("BOOL",),
    "string": ("BYTES",),
}
_ELEMENT: dict[str, Any] = {"BOOL": bool, "BYTES": str}


class RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


_decoder = msgspec.json.Decoder(InferenceRequest)


def field_datatype(spec: FieldSpec) -> str:
    return _FIELD_DATATYPE[spec.type]


def spec_metadata(spec: FieldSpec | TensorSpec) -> dict[str, Any]:
    """A contract entry as V2 model metadata (``name``, ``datatype``, ``shape``)."""
    if isinstance(spec, TensorSpec):
        return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
    return {"name": spec.name, "datatype": field_datatype(spec), "shape": [-1]}


def parse_request(body: bytes) -> InferenceRequest:
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        text = str(exc)
        field = text.split("at `$", 1)[1].rstrip("`") if "at `$" in text else ""
        raise RequestError(f"not an inference request: {text}", code="BAD_REQUEST",
                           details={"field": field.lstrip(".") or "inputs"}) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    if not req.inputs:
        raise RequestError("'inputs' must hold at least one input", code="EMPTY_REQUEST",
                           details={"field": "inputs"})
    for inp in req.inputs:
        if any(d < 0 for d in inp.shape):
            raise RequestError(f"input {inp.name!r}: shape {inp.shape} has a negative size",
                               details={"field": f"inputs.{inp.name}.shape"})
    return req


def decode_request(contract: Contract, req: InferenceRequest) -> Batch:
    by_name = {inp.name: inp for inp in req.inputs}
    if len(by_name) != len(req.inputs):
        raise RequestError("inputs repeat a name", details={"field": "inputs"})
    wanted = set(contract.input_names)
    unknown = [n for n in by_name if n not in wanted]
    if unknown and contract.unknown_fields == "reject":
        raise _violation(unknown[0], f"no such input (expected {sorted(wanted)})", unknown[0],
                         f"unknown input {unknown[0]!r}")
    missing = [n for n in contract.input_names if n not in by_name]
    if missing:
        raise _violation(missing[0], "present", None, f"missing input {missing[0]!r}")
    columns: dict[str, Column] = {}
    rows: int | None = None
    for spec in contract.inputs:
        inp = by_name[spec.name]
        if isinstance(spec, TensorSpec):
            col = _decode_tensor(spec, inp)
            n = col.shape[0]
        else:
            n = math.prod(inp.shape) if inp.shape else 0
            if len(inp.shape) > 2 or (len(inp.shape) == 2 and inp.shape[1] != 1):
                raise _violation(spec.name, "shape [n] or [n, 1]", inp.shape,
                                 f"input {spec.name!r} must be one column")
            _check_datatype(spec.name, inp.datatype, _ACCEPTS[spec.type], field_datatype(spec))
            raw = bytes(inp.data)
            if _nesting(raw) == 2 and len(inp.shape) == 2:  # [[v], ...] for an [n, 1] column
                rows_of = orjson.loads(raw)
                if not all(isinstance(r, list) and len(r) == 1 for r in rows_of):
                    raise _violation(spec.name, "one value per row", "rows of other lengths",
                                     f"input {spec.name!r} must hold one value per row")
                raw = orjson.dumps([r[0] for r in rows_of])
            col = decode_field_column(spec, raw, n)
        if rows is not None and n != rows:
            raise _violation(spec.name, f"{rows} rows like the other inputs", n,
                             "inputs differ in their number of rows")
        rows = n
        columns[spec.name] = col
    if not rows:
        raise RequestError("the request holds no rows", code="EMPTY_REQUEST")
    return Batch(columns, rows)


def _violation(name: str, expected: Any, got: Any, message: str) -> ContractViolation:
    return ContractViolation(f"input contract violated: {message}",
                             violations=[{"record": None, "field": name, "expected": expected,
                                          "got": got, "message": message}])


def _check_datatype(name: str, got: str, accepted: tuple[str, ...], declared: str) -> None:
    if not any(got.startswith(p) for p in accepted):
        raise _violation(name, declared, got, f"input {name!r} has datatype {got}, "
                         f"expected {declared}")


def _decode_tensor(spec: TensorSpec, inp: RequestInput) -> np.ndarray:
    declared = spec.datatype
    if declared.startswith(("FP",)):
        _check_datatype(spec.name, inp.datatype, ("FP", "INT", "UINT"), declared)
    elif declared.startswith(("INT", "UINT")):
        _check_datatype(spec.name, inp.datatype, ("INT", "UINT"), declared)
    else:
        _check_datatype(spec.name, inp.datatype, (declared,), declared)
    element = _ELEMENT.get(declared, float if declared.startswith("FP") else int)
    raw = bytes(inp.data)
    depth = _nesting(raw)
    if depth > max(len(spec.shape), len(inp.shape), 1):
        raise _violation(spec.name, f"data nested at most {len(inp.shape)} deep", depth,
                         f"input {spec.name!r}: data nests deeper than its shape {inp.shape}")
    try:
        values = _data_decoder(element, depth).decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        text = str(exc)
        where = text.split(" - at `$", 1)[1].rstrip("`") if " - at `$" in text else ""
        raise _violation(spec.name, f"{declared} values", where or "other values",
                         f"input {spec.name!r} data{where}: {text.split(' - at ')[0]}") from None
    try:
        arr = np.array(values, dtype=spec.dtype)
    except (ValueError, OverflowError) as exc:
        raise _violation(spec.name, f"a regular {declared} array", "ragged or out of range",
                         f"input {spec.name!r}: {exc}") from None
    need = math.prod(inp.shape)
    if arr.size != need:
        raise _violation(spec.name, f"{need} values for shape {inp.shape}", arr.size,
                         f"input {spec.name!r} declares shape {inp.shape} "
                         f"({need} values) but holds {arr.size}")
    arr = arr.reshape(inp.shape)
    problem = tensor_problem(spec, arr)
    if problem:
        raise ContractViolation(f"input contract violated: {problem['message']}",
                                violations=[problem])
    return arr


@functools.cache
def _data_decoder(element: type, depth: int) -> msgspec.json.Decoder[Any]:
    """A strict decoder for ``depth`` nested lists of ``element`` (bool is not a number)."""
    typ: Any = element
    for _ in range(depth):
        typ = list[typ]
    return msgspec.json.Decoder(typ)


def _nesting(raw: bytes) -> int:
    """How deeply the data list nests (flat or nested lists are both valid V2)."""
    depth = 0
    for ch in raw:
        if ch == 0x5B:
            depth += 1
        elif ch not in b" \t\r\n":
            break
    return max(depth, 1)


def _tensor_out(name: str, datatype: str, col: Column) -> dict[str, Any]:
    if isinstance(col, np.ndarray):
        shape = list(col.shape)
        data: Any = col.reshape(-1) if col.flags.c_contiguous else col.reshape(-1).copy()
    else:
        shape, data = [len(col)], col
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def encode_response(contract: Contract, model: str, version: str, request_id: str | None,
                    outputs: Batch, wanted: list[RequestOutput] | None,
                    prediction_ids: list[str] | None = None) -> bytes:
    specs = contract.outputs
    if wanted:
        names = {o.name for o in wanted}
        unknown = sorted(names - set(contract.output_names))
        if unknown:
            raise RequestError(f"requested output {unknown[0]!r} does not exist; outputs are "
                               f"{contract.output_names}", details={"field": "outputs"})
        specs = tuple(s for s in specs if s.name in names)
    tensors = []
    for spec in specs:
        datatype = spec.datatype if isinstance(spec, TensorSpec) else field_datatype(spec)
        tensors.append(_tensor_out(spec.name, datatype, outputs.columns[spec.name]))
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    if prediction_ids is not None:
        body["parameters"] = {"prediction_ids": prediction_ids}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
