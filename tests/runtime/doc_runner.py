"""A runner written from docs/protocol.md alone, never from Baton's code: if the document
is the specification, this passes the conformance suite as the real runners do.

Standard library only, ``"json"`` encoding only. Its one model, ``builtin:affine``, answers
``prediction = a * x + b`` for the contract's one input ``x`` (``a`` and ``b`` from the
artifact, a JSON file), ``null`` for a missing ``x``; any other ``x`` is an error of the
model. It runs no metric function: each is named in ``errors``.
"""

import json
import math
import os
import struct
import sys
import time
import traceback


def read_exactly(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream):
    """uint32 BE: length of the rest; uint32 BE: header length; header; payload."""
    head = read_exactly(stream, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    body = read_exactly(stream, size)
    if body is None:
        return None
    (hlen,) = struct.unpack(">I", body[:4])
    return json.loads(body[4:4 + hlen].decode("utf-8")), body[4 + hlen:]


def write_frame(stream, header):
    data = json.dumps(header, allow_nan=False).encode("utf-8")
    stream.write(struct.pack(">I", 4 + len(data)) + struct.pack(">I", len(data)) + data)
    stream.flush()


def error_object(stage, code, exc):
    return {"stage": stage, "code": code, "message": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def main():
    # 1. standard output for frames only: the protocol keeps duplicates, the model's
    #    prints go to standard error.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # 2. hello
    write_frame(proto_out, {"op": "hello", "protocol": 1, "runner": "doc", "pid": os.getpid(),
                            "encodings": ["json"]})
    model = None
    # 3. frames in a loop
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return 0  # EOF: exit 0
        header, _payload = frame
        op = header.get("op")
        if op == "load":
            started = time.perf_counter()
            try:
                os.chdir(header["bundle_dir"])
                spec = header["model"]
                if spec.get("entrypoint") != "builtin:affine":
                    raise ValueError(f"unknown entrypoint {spec.get('entrypoint')!r}")
                with open(spec["artifact"], encoding="utf-8") as f:
                    model = json.load(f)
            except Exception as exc:
                write_frame(proto_out, {"op": "loaded", "ok": False,
                                        "error": error_object("load", "LOAD_FAILED", exc)})
                continue
            write_frame(proto_out, {"op": "loaded", "ok": True,
                                    "seconds": time.perf_counter() - started})
        elif op == "predict":
            started = time.perf_counter()
            try:
                (column,) = [c for c in header["columns"] if c["name"] == "x"]
                out = []
                for v in column["values"]:
                    if v is None:
                        out.append(None)
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        y = model["a"] * v + model["b"]
                        out.append(y if math.isfinite(y) else None)
                    else:
                        raise TypeError(f"x must be a number, got {v!r}")
                answer = {"op": "result", "id": header["id"], "ok": True,
                          "rows": header["rows"], "seconds": time.perf_counter() - started,
                          "columns": [{"name": "prediction", "datatype": "JSON",
                                       "values": out}]}
            except Exception as exc:  # 4. errors are answers, not deaths
                answer = {"op": "result", "id": header.get("id"), "ok": False,
                          "error": error_object("model", "MODEL_ERROR", exc)}
            write_frame(proto_out, answer)
        elif op == "metrics":
            write_frame(proto_out, {"op": "result", "id": header.get("id"), "ok": True,
                                    "values": {},
                                    "errors": {f: "NotImplementedError: this runner runs no "
                                               "metric functions"
                                               for f in header.get("functions", [])}})
        elif op == "shutdown":
            return 0
        else:
            write_frame(proto_out, {"op": "error", "id": header.get("id"),
                                    "error": {"code": "UNKNOWN_OP",
                                              "message": f"unknown op {op!r}"}})


if __name__ == "__main__":
    sys.exit(main())
