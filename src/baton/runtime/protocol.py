"""The engine's side of the worker protocol: batches to frames and frames to batches, and
the pipes of a worker process (:class:`WorkerPipes`).

The framing and the datatype table are the runner's own (``runner.py``), so both sides of
the wire read one definition. See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from baton.batch import Batch, Column
from baton.errors import ModelError
from baton.runtime.runner import _LEN, PROTOCOL_VERSION, RAW_DTYPES, pack_frame

if TYPE_CHECKING:
    from baton.runtime.worker import Worker

__all__ = ["PROTOCOL_VERSION", "FrameReader", "WorkerPipes", "decode_columns",
           "encode_predict", "pack_frame"]

#: The most bytes a worker's frame may declare: past it the worker is taken to be writing
#: something else than the protocol, not a batch's answer, and the engine stops reading.
MAX_FRAME = 1 << 30

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
            if size > MAX_FRAME:  # before waiting for it: it would be held whole
                raise ValueError(f"a frame declares {size} bytes, more than a frame may have "
                                 f"({MAX_FRAME})")
            if len(buf) < 4 + size:
                break
            if size < 4:
                raise ValueError(f"a frame of {size} bytes has no room for its header's length")
            (hlen,) = _LEN.unpack_from(buf, 4)
            if hlen > size - 4:
                raise ValueError(f"a frame of {size} bytes declares a header of {hlen}")
            header = orjson.loads(bytes(buf[8:8 + hlen]))
            if not isinstance(header, dict):
                raise ValueError(f"a frame's header is a JSON {type(header).__name__}, "
                                 "not an object")
            payload = bytes(buf[8 + hlen:4 + size])
            del buf[:4 + size]
            frames.append((header, payload))
        return frames


class WorkerPipes(asyncio.SubprocessProtocol):
    """A worker process's pipes: frames from its protocol channel (fd 1), lines from its
    standard error, its exit."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.reader = FrameReader()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            self.worker._on_stderr(data)
        elif self.worker.protocol_error is None:  # after a broken frame, nothing is read
            try:
                for header, payload in self.reader.feed(data):
                    self.worker._on_frame(header, payload)
            except Exception as exc:
                self.worker.broke_protocol(exc)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (0, 1) and self.worker.state == "ready":
            self.worker.state = "exiting"  # its pipes are gone: send it nothing more

    def process_exited(self) -> None:
        self.worker._on_exit()
