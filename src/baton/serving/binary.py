"""The V2 binary tensor data extension, as Triton and KServe define it.

A body in this framing is ``Inference-Header-Content-Length`` bytes of JSON (the ordinary
V2 request or response) followed by the raw bytes of every binary tensor, in the order the
JSON lists them: inputs that carry ``parameters.binary_data_size`` instead of ``data``;
outputs asked for with ``parameters.binary_data`` (or the request's
``binary_data_output``), answered with ``parameters.binary_data_size``.

Elements are little-endian in their native size, row major, without padding; BOOL is one
byte (0 or 1); BYTES is, per element, a 4-byte little-endian length and that many bytes.
Baton's BYTES are text, so each element must be UTF-8.

Bodies arrive and leave as :class:`Framed` (a ``bytes`` that knows its JSON length), so the
transport-agnostic service passes them through untouched and plain JSON bodies cost nothing.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from baton.contract.spec import TENSOR_DATATYPES
from baton.errors import ContractViolation, RequestError

HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


class Framed(bytes):
    """A body whose first ``json_length`` bytes are JSON and the rest binary tensor data."""

    json_length: int

    def __new__(cls, data: bytes, json_length: int) -> Framed:
        body = super().__new__(cls, data)
        body.json_length = json_length
        return body


def header_length(value: bytes, body_size: int) -> int:
    """The ``Inference-Header-Content-Length`` header's value, checked against the body."""
    if not value.isdigit() or len(value) > 18:
        raise RequestError(f"header {HEADER} must be a byte count, got {value[:40]!r}",
                           details={"field": HEADER})
    length = int(value)
    if length > body_size:
        raise RequestError(f"header {HEADER} is {length} but the body holds only "
                           f"{body_size} bytes", details={"field": HEADER})
    return length


def split_parts(body: Framed, inputs: list[tuple[str, Any]]) -> dict[str, memoryview]:
    """Cut the binary section into one part per ``(name, binary_data_size)``, in order.

    The sizes must add up to the binary section exactly: a shorter or longer body means the
    client and the server would read different tensors.
    """
    tail = memoryview(body)[body.json_length:]
    parts: dict[str, memoryview] = {}
    pos = 0
    for name, size in inputs:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RequestError(f"input {name!r}: parameters.binary_data_size must be a "
                               f"byte count, got {size!r}",
                               details={"field": f"inputs.{name}.parameters.binary_data_size"})
        if pos + size > len(tail):
            raise RequestError(f"input {name!r}: binary_data_size {size} runs past the end of "
                               f"the body ({len(tail) - pos} bytes left after the inputs "
                               "before it)",
                               details={"field": f"inputs.{name}.parameters.binary_data_size"})
        parts[name] = tail[pos:pos + size]
        pos += size
    if pos != len(tail):
        raise RequestError(f"the body holds {len(tail)} bytes after the JSON header but the "
                           f"inputs' binary_data_size add up to {pos}",
                           details={"field": HEADER})
    return parts


def decode_part(name: str, datatype: str, shape: list[int], part: memoryview) -> np.ndarray:
    """One input's bytes as an array of ``shape`` (BYTES: an object array of ``str``)."""
    count = math.prod(shape)
    field = f"inputs.{name}.parameters.binary_data_size"
    if datatype == "BYTES":
        return np.array(_text_elements(name, part, count), dtype=object).reshape(shape)
    dtype = np.dtype(TENSOR_DATATYPES[datatype]).newbyteorder("<")
    if len(part) != count * dtype.itemsize:
        raise RequestError(f"input {name!r}: {len(part)} bytes of binary data, but shape "
                           f"{shape} of {datatype} ({dtype.itemsize} bytes each) needs "
                           f"{count * dtype.itemsize}", details={"field": field})
    if datatype == "BOOL":
        raw = np.frombuffer(part, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise _bad_value(name, "BOOL bytes 0 or 1", int(raw.max()))
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(part, dtype=dtype).reshape(shape)


def _text_elements(name: str, part: memoryview, count: int) -> list[str]:
    out: list[str] = []
    pos, end = 0, len(part)
    while pos < end:
        if len(out) == count:  # stop here: a body of tiny elements would make millions
            raise RequestError(f"input {name!r} holds more than {count} BYTES elements, "
                               f"the number its shape needs", details={"field": f"inputs.{name}"})
        if pos + 4 > end:
            raise RequestError(f"input {name!r}: BYTES element {len(out)} is cut short: its "
                               "4-byte length runs past the data",
                               details={"field": f"inputs.{name}"})
        (size,) = _LENGTH.unpack_from(part, pos)
        pos += 4
        if pos + size > end:
            raise RequestError(f"input {name!r}: BYTES element {len(out)} declares {size} "
                               f"bytes but only {end - pos} remain",
                               details={"field": f"inputs.{name}"})
        try:
            out.append(str(part[pos:pos + size], "utf-8"))
        except UnicodeDecodeError:
            raise _bad_value(name, "UTF-8 text", f"element {len(out)} is not UTF-8") from None
        pos += size
    if len(out) != count:
        raise RequestError(f"input {name!r} holds {len(out)} BYTES elements but its shape "
                           f"needs {count}", details={"field": f"inputs.{name}"})
    return out


def _bad_value(name: str, expected: str, got: Any) -> ContractViolation:
    message = f"input {name!r}: expected {expected}, got {got}"
    return ContractViolation(f"input contract violated: {message}", violations=[
        {"record": None, "field": name, "expected": expected, "got": got, "message": message}])


def encode_part(datatype: str, column: Any) -> bytes | None:
    """An output column as binary tensor data; ``None`` when it holds a null (NaN in a
    float output), which the binary format cannot express: that output stays JSON."""
    if datatype == "BYTES":
        if any(v is None for v in column):
            return None
        out = bytearray()
        for v in (column.reshape(-1) if isinstance(column, np.ndarray) else column):
            raw = v if isinstance(v, bytes) else str(v).encode()
            out += _LENGTH.pack(len(raw))
            out += raw
        return bytes(out)
    if not isinstance(column, np.ndarray):
        if any(v is None for v in column):
            return None
        column = np.asarray(column)
    if column.dtype.kind == "f" and np.isnan(column).any():
        return None
    wire = np.dtype(TENSOR_DATATYPES[datatype]).newbyteorder("<")
    return np.ascontiguousarray(column, dtype=wire).tobytes()
