"""ModelInfer's messages to the V2 codec's requests, and scored batches back to messages.

A ``ModelInferRequest`` becomes the very request an HTTP body in the binary tensor data
extension becomes (:class:`~baton.serving.v2.BinaryRequest`): each input's bytes, raw
(``raw_input_contents``) or typed (``contents``, laid out as raw bytes first), are cut
into parts that :func:`baton.serving.v2.decode_request` checks against the contract. So a
gRPC request and an HTTP one with the same values get the same answer and the same verdict.

Raw bytes are little-endian, row-major, without padding; BOOL is one byte; BYTES is, per
element, a 4-byte little-endian length and that many bytes (UTF-8 text, as Baton's strings
are). The answer is raw (``raw_output_contents``) when the request was, typed otherwise. A
float null travels as NaN; a null in a string, integer or boolean output has no spelling in
either form and is refused (``NULL_OUTPUT``): ask over HTTP, whose JSON has one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from baton.batch import Batch, Column
from baton.contract.spec import TENSOR_DATATYPES, Contract, TensorSpec
from baton.errors import BatonError, RequestError
from baton.server import grpc_predict_v2_pb2 as pb
from baton.serving import binary, shapes, v2

#: Datatype -> the field of InferTensorContents that holds its values (FP16: raw only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "BYTES": "bytes_contents"}
#: The numpy type each contents field holds its values in.
_HELD = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
         "uint_contents": np.uint32, "uint64_contents": np.uint64,
         "fp32_contents": np.float32, "fp64_contents": np.float64}
_LENGTH = struct.Struct("<I")


class NullOutput(BatonError):
    """A null in an output whose gRPC form (raw or typed) cannot spell one."""

    code = "NULL_OUTPUT"
    http_status = 501


def to_request(msg: pb.ModelInferRequest) -> v2.BinaryRequest:
    """The V2 request of a ModelInfer message (parameters other than the outputs' are
    accepted and, as over HTTP, have no effect)."""
    if not msg.inputs:
        raise RequestError("'inputs' must hold at least one input", code="EMPTY_REQUEST",
                           details={"field": "inputs"})
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise RequestError(f"raw_input_contents holds {len(raw)} entries for "
                           f"{len(msg.inputs)} inputs: one per input, in their order",
                           details={"field": "raw_input_contents"})
    inputs, parts = [], {}
    for i, tensor in enumerate(msg.inputs):
        name, shape = tensor.name, list(tensor.shape)
        shapes.check_shape(name, shape)
        if raw:
            if tensor.HasField("contents"):
                raise RequestError(f"input {name!r} has contents, but the request sends "
                                   "raw_input_contents (one or the other, for every input)",
                                   details={"field": f"inputs.{name}.contents"})
            parts[name] = memoryview(raw[i])
        else:
            parts[name] = memoryview(_typed_bytes(tensor, shape))
        inputs.append(v2.RequestInput(name, shape, tensor.datatype))
    return v2.BinaryRequest(inputs=inputs, id=msg.id or None, outputs=_outputs(msg),
                            parts=parts)


def _typed_bytes(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> bytes:
    """An input's ``contents`` as the raw bytes of its datatype."""
    name, datatype = tensor.name, tensor.datatype
    where = {"field": f"inputs.{name}.contents"}
    field = CONTENTS.get(datatype)
    if field is None:
        if datatype == "FP16":
            raise RequestError(f"input {name!r} is FP16, which has no contents field: send "
                               "it as raw_input_contents", details=where)
        return b""  # not a V2 datatype: the contract check names it
    for desc, _ in tensor.contents.ListFields():
        if desc.name != field:
            raise RequestError(f"input {name!r} is {datatype}: its values belong in "
                               f"contents.{field}, not contents.{desc.name}", details=where)
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise RequestError(f"input {name!r}: shape {shape} needs {count} values, "
                           f"contents.{field} holds {len(values)}", details=where)
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in values)
    held: np.ndarray = np.fromiter(values, dtype=_HELD[field], count=count)
    wire = np.dtype(TENSOR_DATATYPES[datatype]).newbyteorder("<")
    if held.dtype != wire and held.size and wire.kind in "iu":
        info = np.iinfo(wire)
        if held.min() < info.min or held.max() > info.max:
            raise RequestError(f"input {name!r}: contents.{field} holds values outside "
                               f"{datatype}'s range [{info.min}, {info.max}]", details=where)
    return held.astype(wire).tobytes()


def _outputs(msg: pb.ModelInferRequest) -> list[v2.RequestOutput] | None:
    """The outputs asked for (None: all). ``binary_data`` and ``binary_data_output``, HTTP
    parameters, have no effect but must be true or false, as over HTTP (which refused
    ``"yes"`` where gRPC took it); any other output parameter is refused, as over HTTP."""
    _boolean(msg.parameters, "binary_data_output", "parameters.binary_data_output")
    if not msg.outputs:
        return None
    for out in msg.outputs:
        for key in out.parameters:
            if key != "binary_data":
                raise RequestError(f"output {out.name!r}: parameter {key!r} is not supported "
                                   "(only binary_data)",
                                   details={"field": f"outputs.{out.name}.parameters.{key}"})
        _boolean(out.parameters, "binary_data", f"output {out.name!r}: binary_data",
                 f"outputs.{out.name}.parameters.binary_data")
    return [v2.RequestOutput(out.name) for out in msg.outputs]


def _boolean(params: Any, key: str, what: str, field: str | None = None) -> None:
    """Refuse ``params[key]`` when present and not a ``bool_param``."""
    if key not in params:
        return
    kind = params[key].WhichOneof("parameter_choice")
    if kind != "bool_param":
        got = repr(getattr(params[key], kind)) if kind is not None else "no value"
        raise RequestError(f"{what} must be true or false, got {got}",
                           details={"field": field or what})


def to_response(contract: Contract, out: Batch, wanted: list[v2.RequestOutput] | None, *,
                raw: bool) -> pb.ModelInferResponse:
    """The outputs of a scored batch (those ``wanted``, or all), raw or typed; the caller
    sets the names, id and parameters."""
    specs: Iterable[Any] = contract.outputs
    if wanted:  # names checked by decode_request
        names = {o.name for o in wanted}
        specs = [s for s in contract.outputs if s.name in names]
    tensors, contents = [], []
    for spec in specs:
        datatype = spec.datatype if isinstance(spec, TensorSpec) else v2.field_datatype(spec)
        col = out.columns[spec.name]
        shape = list(col.shape) if isinstance(col, np.ndarray) else [len(col)]
        tensor = pb.ModelInferResponse.InferOutputTensor(name=spec.name, datatype=datatype,
                                                          shape=shape)
        if raw:
            contents.append(_raw(spec.name, datatype, col))
        else:
            _typed(tensor.contents, spec.name, datatype, col)
        tensors.append(tensor)
    return pb.ModelInferResponse(outputs=tensors, raw_output_contents=contents)


def _raw(name: str, datatype: str, col: Column) -> bytes:
    if datatype.startswith("FP"):  # a null is NaN
        wire = np.dtype(TENSOR_DATATYPES[datatype]).newbyteorder("<")
        return np.ascontiguousarray(col, dtype=wire).tobytes()
    part = binary.encode_part(datatype, col)
    if part is None:
        raise _null(name, datatype)
    return part


def _typed(contents: pb.InferTensorContents, name: str, datatype: str, col: Column) -> None:
    field = getattr(contents, CONTENTS[datatype])
    if datatype == "BYTES":
        flat = col.reshape(-1).tolist() if isinstance(col, np.ndarray) else col
        if any(v is None for v in flat):
            raise _null(name, datatype)
        field.extend([v if isinstance(v, bytes) else str(v).encode() for v in flat])
        return
    if datatype.startswith("FP"):
        field.extend(np.asarray(col, dtype=np.float64).reshape(-1).tolist())
        return
    if not isinstance(col, np.ndarray):
        if any(v is None for v in col):
            raise _null(name, datatype)
        col = np.asarray(col)
    if col.dtype.kind == "f" and np.isnan(col).any():
        raise _null(name, datatype)
    field.extend(col.reshape(-1).tolist())


def _null(name: str, datatype: str) -> NullOutput:
    return NullOutput(f"output {name!r} holds a null, which a {datatype} tensor cannot carry "
                      "over gRPC (only a float's NaN can): ask over HTTP, whose JSON has null",
                      details={"output": name})
