"""The engine's side of the worker protocol: batches to frames and frames to batches.

The framing and the datatype table are the runner's own (``runner.py``), so both sides of
the wire read one definition. See docs/protocol.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from baton.batch import Batch, Column
from baton.errors import ModelError
from baton.runtime.runner import _LEN, PROTOCOL_VERSION, RAW_DTYPES, pack_frame

__all__ = ["PROTOCOL_VERSION", "FrameReader", "decode_columns", "encode_predict", "pack_frame"]

_DTYPE_TO_DATATYPE = {np.dtype(v): k for k, v in RAW_DTYPES.items()}
_NATIVE = {k: np.dtype(v) for k, v in RAW_DTYPES.items()}


def _json_values(col: Column) -> list[Any]:
    values = col.tolist() if isinstance(col, np.ndarray) else col
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def encode_predict(request_id: int, batch: Batch, raw: bool) -> bytes:
    """A ``predict`` frame; numeric columns travel as raw buffers when the runner allows."""
    metas: list[dict[str, Any]] = []
    parts: list[memoryview] = []
    offset = 0
    for name, col in batch.columns.items():
        arr = col if raw and isinstance(col, np.ndarray) else None
        datatype = None if arr is None else _DTYPE_TO_DATATYPE.get(arr.dtype.newbyteorder("<"))
        if arr is None or datatype is None:
            metas.append({"name": name, "datatype": "JSON", "values": _json_values(col)})
            continue
        buf = np.ascontiguousarray(arr, dtype=_NATIVE[datatype]).data.cast("B")
        metas.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                      "offset": offset, "nbytes": buf.nbytes})
        parts.append(buf)
        offset += buf.nbytes
    header = orjson.dumps({"op": "predict", "id": request_id, "rows": batch.rows,
                           "columns": metas})
    # One join builds the frame (see pack_frame): the column buffers are copied once,
    # straight from the arrays (views of them, not copies, until then).
    return b"".join([_LEN.pack(4 + len(header) + offset), _LEN.pack(len(header)), header,
                     *parts])


def decode_columns(metas: list[dict[str, Any]], payload: bytes, rows: int) -> Batch:
    columns: dict[str, Column] = {}
    try:
        for m in metas:
            if m["datatype"] == "JSON":
                columns[m["name"]] = m["values"]
                continue
            dtype = _NATIVE[m["datatype"]]
            arr = np.frombuffer(payload, dtype=dtype, count=m["nbytes"] // dtype.itemsize,
                                offset=m["offset"])
            columns[m["name"]] = arr.reshape(m["shape"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"the worker sent a malformed result: {exc}",
                         code="PROTOCOL_ERROR") from None
    return Batch(columns, rows)


class FrameReader:
    """Accumulates bytes from a pipe and yields complete ``(header, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        buf = self._buf
        buf.extend(data)
        frames = []
        while len(buf) >= 4:
            (size,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + size:
                break
            (hlen,) = _LEN.unpack_from(buf, 4)
            header = orjson.loads(bytes(buf[8:8 + hlen]))
            payload = bytes(buf[8 + hlen:4 + size])
            del buf[:4 + size]
            frames.append((header, payload))
        return frames
