"""Baton's Python runner: hosts one model inside its own environment.

This file runs with the *model's* interpreter (``python -I -B runner.py``), imports only the
standard library (numpy and pandas when the model's environment has them) and speaks the
worker protocol (docs/protocol.md) over its standard input and output, which it claims at
start-up: what the model prints goes to standard error, never into the protocol's stream.
"""

from __future__ import annotations

import atexit
import errno
import importlib.util
import inspect
import json
import math
import os
import pickle
import struct
import sys
import time
import traceback
from typing import Any, BinaryIO

PROTOCOL_VERSION = 1
_LEN = struct.Struct(">I")
#: Open Inference Protocol datatypes carried as raw little-endian buffers.
RAW_DTYPES = {
    "BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "|i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_KIND_TO_DATATYPE = {(k, int(v[2:])): n for n, v in RAW_DTYPES.items() for k in [v[1]]}


def pack_frame(header: bytes, payload: bytes = b"") -> bytes:
    return _LEN.pack(4 + len(header) + len(payload)) + _LEN.pack(len(header)) + header + payload


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = _LEN.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    (hlen,) = _LEN.unpack_from(body)
    return json.loads(body[4:4 + hlen]), body[4 + hlen:]


class Runner:
    """Loads the model and answers ``predict`` requests, one at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        #: A process the model forks that returns here ends rather than answer or read.
        self.pid = os.getpid()
        self.model: Any = None
        self.config: dict[str, Any] = {}
        try:
            import numpy
            self.np: Any = numpy
        except ImportError:
            self.np = None
        self.pd: Any = None

    # -- messages ------------------------------------------------------------------------
    def owns_protocol(self) -> bool:
        return os.getpid() == self.pid

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if not self.owns_protocol():
            os._exit(0)
        data = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
        self.out.write(pack_frame(data, payload))
        self.out.flush()

    def hello(self) -> None:
        encodings = ["json", "raw"] if self.np is not None else ["json"]
        self.send({"op": "hello", "protocol": PROTOCOL_VERSION, "runner": "python",
                   "pid": os.getpid(), "python": sys.version.split()[0],
                   "encodings": encodings})

    def handle(self, header: dict[str, Any], payload: bytes) -> bool:
        op = header.get("op")
        if op == "load":
            self.on_load(header)
        elif op == "predict":
            self.on_predict(header, payload)
        elif op == "metrics":
            self.on_metrics(header)
        elif op == "shutdown":
            return False
        else:
            self.send({"op": "error", "id": header.get("id"),
                       "error": {"code": "UNKNOWN_OP", "message": f"unknown op {op!r}"}})
        return True

    # -- load ----------------------------------------------------------------------------
    def on_load(self, header: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.config = header
        bundle = header["bundle_dir"]
        os.chdir(bundle)
        if bundle not in sys.path:
            sys.path.insert(0, bundle)
        try:
            self.model = self._load(header["model"], bundle)
        except _StageError as exc:
            self.send({"op": "loaded", "ok": False, "error": exc.to_dict()})
            return
        self.send({"op": "loaded", "ok": True, "seconds": time.perf_counter() - started})

    def _load(self, spec: dict[str, Any], bundle: str) -> Any:
        if self.config.get("kind") == "records":
            try:
                import pandas
                self.pd = pandas
            except ImportError:
                self.pd = None
        entry = spec["entrypoint"]
        if entry in ("builtin:sklearn", "builtin:onnx"):
            path = os.path.join(bundle, spec["artifact"])
            try:
                if entry == "builtin:onnx":  # the onnx runner: onnx_model.py, beside this
                    return _beside("onnx_model").OnnxModel(path, self.config)
                with open(path, "rb") as f:
                    return pickle.load(f)
            except (ImportError, AttributeError) as exc:
                raise _StageError("import", "IMPORT_FAILED", exc) from None
            except Exception as exc:
                raise _StageError("load", "LOAD_FAILED", exc) from None
        module_name, _, attr = entry.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except Exception as exc:
            raise _StageError("import", "IMPORT_FAILED", exc) from None
        try:
            model = target() if isinstance(target, type) else target
            if hasattr(model, "load"):
                model.load(bundle)
        except Exception as exc:
            raise _StageError("load", "LOAD_FAILED", exc) from None
        if not callable(getattr(model, "predict", None)):
            raise _StageError("load", "LOAD_FAILED",
                              TypeError(f"{entry} has no predict(inputs) method"))
        return model

    # -- predict -------------------------------------------------------------------------
    def on_predict(self, header: dict[str, Any], payload: bytes) -> None:
        rid = header.get("id")
        started = time.perf_counter()
        try:
            columns = self.decode_columns(header["columns"], payload)
            outputs = self.predict(columns, header["rows"])
            meta, blob = self.encode_columns(outputs)
        except Exception as exc:
            self.send({"op": "result", "id": rid, "ok": False,
                       "error": _StageError("model", error_code(exc), exc).to_dict()})
            return
        self.send({"op": "result", "id": rid, "ok": True, "rows": header["rows"],
                   "seconds": time.perf_counter() - started, "columns": meta}, blob)

    def on_metrics(self, header: dict[str, Any]) -> None:
        """Run the data scientist's metric functions ``fn(y_true, y_pred[, outputs])``:
        ``y_pred`` holds the model's predictions; a function with a third parameter also
        gets the whole output records (e.g. class probabilities for an AUC)."""
        values: dict[str, float] = {}
        errors: dict[str, str] = {}
        for name in header["functions"]:
            module_name, _, attr = name.partition(":")
            try:
                fn: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    fn = getattr(fn, part)
                args = [header["y_true"], header["y_pred"]]
                if _arity(fn) >= 3:  # fn(y_true, y_pred, outputs): whole output records too
                    args.append(header.get("outputs", []))
                value = float(fn(*args))
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
                values[name] = value
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        self.send({"op": "result", "id": header.get("id"), "ok": True, "values": values,
                   "errors": errors})

    def decode_columns(self, metas: list[dict[str, Any]], payload: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in metas:
            if m["datatype"] == "JSON":
                out[m["name"]] = m["values"]
            else:
                arr = self.np.frombuffer(payload, dtype=RAW_DTYPES[m["datatype"]],
                                         count=m["nbytes"] // self.np.dtype(
                                             RAW_DTYPES[m["datatype"]]).itemsize,
                                         offset=m["offset"])
                out[m["name"]] = arr.reshape(m["shape"])
        return out

    def predict(self, columns: dict[str, Any], rows: int) -> dict[str, Any]:
        cfg = self.config
        names, outputs = cfg["inputs"], cfg["outputs"]
        if cfg["kind"] == "records":
            inputs: Any = self._frame(columns, names)
        else:
            inputs = {n: columns[n] for n in names}
        if cfg["model"]["entrypoint"] != "builtin:sklearn":
            return self._as_columns(self.model.predict(inputs), outputs)
        if cfg["kind"] == "tensors":
            x = inputs[names[0]]
            return {outputs[0]: getattr(self.model, cfg["model"]["method"])(x)}
        if cfg["model"]["method"] == "predict_proba":
            proba = self.model.predict_proba(inputs)
            classes = self.model.classes_
            result = {"prediction": classes[proba.argmax(axis=1)]}
            for i, c in enumerate(classes):
                result[f"proba_{c}"] = proba[:, i]
            return result
        return {"prediction": self.model.predict(inputs)}

    def _frame(self, columns: dict[str, Any], names: list[str]) -> Any:
        if self.pd is None:
            return {n: columns[n] for n in names}
        fields = self.config.get("fields") or [{} for _ in names]
        data = {n: self._column(columns[n], f) for n, f in zip(names, fields, strict=True)}
        return self.pd.DataFrame(data, columns=names)

    def _column(self, col: Any, field: dict[str, Any]) -> Any:
        """One input column with the dtype the model saw in its training sample.

        Built from the field alone, never from the values, so a column's dtype does not
        depend on the other records of the batch (an all-null string column stays text).
        The defaults and dtypes are in docs/contract.md#what-the-model-receives.
        """
        pd, dtype = self.pd, field.get("dtype")
        if dtype == "object":  # the sample's missing values were None
            return pd.Series(col if isinstance(col, list) else col.tolist(), dtype=object)
        if dtype == "category":
            values = col.tolist() if not isinstance(col, list) else col
            if field["type"] == "integer":
                values = [None if v is None or v != v else int(v) for v in values]
            return pd.Series(pd.Categorical(values, categories=field["categories"]))
        if isinstance(col, list):
            # Missing values reach pandas and scikit-learn as NaN, their convention.
            col = [math.nan if v is None else v for v in col]
            if dtype is None and field.get("type") in ("string", "boolean"):
                dtype = object
        return col if dtype is None else pd.Series(col, dtype=dtype)

    def _as_columns(self, result: Any, outputs: list[str]) -> dict[str, Any]:
        if self.pd is not None and isinstance(result, self.pd.DataFrame):
            return {c: result[c].to_numpy() for c in result.columns}
        if isinstance(result, dict):
            return result
        if len(outputs) == 1:
            return {outputs[0]: result}
        raise TypeError("predict() must return a DataFrame or a dict of columns, "
                        f"got {type(result).__name__}")

    def encode_columns(self, outputs: dict[str, Any]) -> tuple[list[dict[str, Any]], bytes]:
        metas, parts, offset = [], [], 0
        np = self.np
        for name, value in outputs.items():
            if np is not None and not isinstance(value, list | tuple):
                value = np.asarray(value)
                key = (value.dtype.kind, value.dtype.itemsize)
                datatype = _KIND_TO_DATATYPE.get(key) if value.dtype.kind in "biuf" else None
                if datatype is not None:
                    buf = np.ascontiguousarray(value, dtype=RAW_DTYPES[datatype]).tobytes()
                    metas.append({"name": name, "datatype": datatype,
                                  "shape": list(value.shape), "offset": offset,
                                  "nbytes": len(buf)})
                    parts.append(buf)
                    offset += len(buf)
                    continue
                value = value.tolist()
            metas.append({"name": name, "datatype": "JSON", "values": _json_safe(list(value))})
        return metas, b"".join(parts)


def _arity(fn: Any) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return 2


def _json_safe(values: list[Any]) -> list[Any]:
    out = [v.item() if hasattr(v, "item") else v for v in values]
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in out]


def _beside(name: str) -> Any:
    """A module in this file's folder, by its path: the model's sys.path never has it."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec: Any = importlib.util.spec_from_file_location(f"baton_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: errno values the sandbox gives a model connecting without network, or writing outside /tmp.
_NO_NETWORK = {errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.EAFNOSUPPORT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def error_code(exc: BaseException | None) -> str:
    """A model error's code, naming the isolation limit behind it (docs/isolation.md)."""
    env = os.environ
    for _ in range(8):  # the error, and what it was raised from or during
        if isinstance(exc, MemoryError) and env.get("BATON_LIMIT_MEMORY_MB"):
            return "MEMORY_LIMIT"
        if isinstance(exc, OSError):
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return "OPEN_FILES_LIMIT"
            if exc.errno == errno.EAGAIN and env.get("BATON_LIMIT_PROCESSES"):
                return "PROCESS_LIMIT"
            offline = env.get("BATON_NO_NETWORK") and (
                exc.errno in _NO_NETWORK or type(exc).__name__ == "gaierror")
            if env.get("BATON_ISOLATION") == "sandbox" and (offline or exc.errno in _READ_ONLY):
                return "SANDBOX_REFUSED"
        exc = exc and (exc.__cause__ or exc.__context__)
    return "MODEL_ERROR"


class _StageError(Exception):
    def __init__(self, stage: str, code: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.stage, self.code, self.exc = stage, code, exc

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "code": self.code,
                "message": f"{type(self.exc).__name__}: {self.exc}",
                "traceback": cut_lines("".join(traceback.format_exception(self.exc)))}


def cut_lines(text: str, limit: int = 4000) -> str:
    """``text`` in about ``limit`` characters cut at line ends: its first line, a marker
    ``... (N lines cut)``, and as many of its last lines as fit, from one that is not blank
    (a traceback's start and its exception). A line alone too long keeps its start."""
    if len(text) <= limit:
        return text
    lines = text.splitlines(keepends=True)
    room = max(limit - 40, 80)  # the marker's room
    head = _cut_line(lines[0], room // 2 if len(lines) > 1 else room)
    used, tail = len(head), []
    for line in reversed(lines[1:]):
        if used + len(line) > room:
            break
        tail.append(line)
        used += len(line)
    while tail and not tail[-1].strip():
        tail.pop()
    if not tail and len(lines) > 1:  # the last line alone is too long: its start
        tail.append(_cut_line(lines[-1], room - used))
    cut = len(lines) - 1 - len(tail)
    return head + (f"... ({cut} lines cut)\n" if cut else "") + "".join(reversed(tail))


def _cut_line(line: str, size: int) -> str:
    if len(line) <= size:
        return line
    keep = max(size - 40, 0)  # the marker's room
    end = "\n" if line.endswith("\n") else ""
    return f"{line[:keep]}... ({len(line) - len(end) - keep} characters cut){end}"


def _claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Keep stdin/stdout for the protocol; point fd 0 at /dev/null and fd 1 at stderr."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def main() -> int:
    if sys.argv[1:] == ["--template"]:  # template_runner.py: returns in a forked worker
        _beside("template_runner").serve()
    proto_in, proto_out = _claim_stdio()
    runner = Runner(proto_out)
    runner.hello()
    while (frame := read_frame(proto_in)) is not None and runner.handle(*frame):
        pass
    return 0


if __name__ == "__main__":
    code = main()
    atexit._run_exitfuncs()  # the model's exit handlers (logging's too), then no teardown:
    sys.stderr.flush()  # freeing the libraries' objects one by one took 0.3 s (issue 15)
    os._exit(code)
