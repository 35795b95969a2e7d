"""The ONNX runner's model (``runner = "onnx"``): an ``.onnx`` file run by onnxruntime.

Like runner.py, this file runs with the *model's* interpreter, in an environment that holds
onnxruntime and numpy and not the framework the model was trained with; the runner loads it
by its path (never from ``sys.path``) and calls it as a model with ``predict(inputs)``.

Inputs: a tensors contract's tensor goes to the graph's one input; a records contract's
columns go to the graph's inputs of the same names, each as a column ``[rows, 1]`` (what
skl2onnx makes of a DataFrame's columns), or, to a graph with one input, side by side as
one ``[rows, columns]`` matrix in the contract's order. Each is cast to the input's
element type; a value the type cannot hold (a fraction or a missing value for an integer,
a number past a float's range, 2 for a bool) is refused, naming the input and record. A
graph whose inputs cannot take the contract's (the wrong number, rank or width) is refused
at load; one whose batch dimension is fixed at 1 is run a row at a time.

Outputs: skl2onnx's classifiers give ``label`` and ``probabilities`` (``output_label`` and
``output_probability``, a list of ``{class: p}`` maps, with its ZipMap); ``predict_proba``
takes the probabilities (a records contract's ``proba_*`` fields are their columns, in
order, or by class with ZipMap), ``predict`` the label or, for a regressor, the one output.

The file is read before onnxruntime sees it (:func:`check_external_data`): whatever
onnxruntime the bundle pins, it must be a protobuf, and a tensor whose data is "external"
must name a file inside the model's own folder, so no weights come from outside the bundle.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

#: ONNX element types -> numpy dtypes for the inputs a runner feeds.
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint64)": "uint64",
           "tensor(uint32)": "uint32", "tensor(uint16)": "uint16", "tensor(uint8)": "uint8",
           "tensor(bool)": "bool", "tensor(string)": "object"}
_LABELS = ("label", "output_label")
_PROBAS = ("probabilities", "output_probability")


class OnnxModel:
    def __init__(self, path: str | bytes, config: dict[str, Any]) -> None:
        """``path``: the .onnx file (or the graph's bytes); ``config``: the ``load``
        message (kind, inputs, outputs, model.method)."""
        import numpy as np
        import onnxruntime as ort

        self.np = np
        where = "the ONNX graph" if isinstance(path, bytes) else os.path.relpath(path)
        check_external_data(path)
        options = ort.SessionOptions()
        threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own kinds: say which file, and what it said
            raise ValueError(f"{where}: onnxruntime cannot load it: {exc}") from None
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kind = config["kind"]
        self.names = config["inputs"]
        self.outputs = config["outputs"]
        self.method = config["model"].get("method", "predict")
        self._check_inputs(where)
        probas = [n for n in self.outputs if n.startswith("proba_")]
        if self.method == "predict_proba" and self.kind == "records" and probas and \
                not any(n in self.output_names for n in _PROBAS):
            raise ValueError(f"{where}: method 'predict_proba' fills {', '.join(probas)} from "
                             f"an output named {' or '.join(_PROBAS)}; the graph's outputs "
                             f"are {', '.join(self.output_names)}")
        #: A graph whose batch dimension is fixed at 1 gets one row at a time.
        firsts = [_fixed(i.shape[0]) for i in self.inputs if i.shape]
        self.one_row = bool(firsts) and all(d == 1 for d in firsts)

    def _check_inputs(self, where: str) -> None:
        """The graph's inputs can take the contract's: else a clear error at load, not a
        failure of every request."""
        shapes = {i.name: f"{i.name!r} {i.type} {list(i.shape)}" for i in self.inputs}
        for i in self.inputs:
            if i.type not in _DTYPES:
                raise TypeError(f"{where}: the input {shapes[i.name]} has an element type "
                                f"this runner cannot feed ({', '.join(_DTYPES)})")
        if self.kind == "tensors" and len(self.inputs) != 1:
            raise ValueError(f"{where}: a tensors contract feeds one input; the graph takes "
                             f"{len(self.inputs)}: {', '.join(shapes.values())}")
        if self.kind != "records":
            return
        if len(self.inputs) > 1:
            missing = [i.name for i in self.inputs if i.name not in self.names]
            if missing:
                raise ValueError(f"the ONNX graph takes inputs {missing} that the contract "
                                 f"does not have (contract: {self.names})")
        width = len(self.names) if len(self.inputs) == 1 else 1
        for i in self.inputs:
            if len(i.shape) != 2 or _fixed(i.shape[1]) not in (None, width):
                raise ValueError(
                    f"{where}: the input {shapes[i.name]} cannot take the contract's "
                    + (f"{width} columns as [rows, {width}]" if width > 1 else
                       f"field {i.name!r} as a column [rows, 1]"))

    def predict(self, inputs: Any) -> dict[str, Any]:
        feeds = self._feeds(inputs)
        rows = len(next(iter(feeds.values())))
        if not self.one_row or rows == 1:
            return self._outputs(self._run(feeds))
        if rows == 0:  # nothing to run a graph of one row on
            return {name: self.np.empty(0) for name in self.outputs}
        parts = [self._run({k: v[r:r + 1] for k, v in feeds.items()}) for r in range(rows)]
        return self._outputs({k: self.np.concatenate([p[k] for p in parts])
                              if not isinstance(parts[0][k], list)
                              else [x for p in parts for x in p[k]] for k in parts[0]})

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        np = self.np
        if self.kind == "tensors":
            (graph,) = self.inputs
            return {graph.name: self._cast(np.asarray(inputs[self.names[0]]), graph)}
        columns = {n: np.asarray(inputs[n]) for n in self.names}
        if len(self.inputs) == 1:  # one matrix, the columns side by side
            (graph,) = self.inputs
            if _DTYPES[graph.type] != "object":  # each column checked as itself
                return {graph.name: np.column_stack(
                    [self._cast(columns[n], graph, n) for n in self.names])}
            matrix = np.column_stack([columns[n] for n in self.names])
            return {graph.name: self._cast(matrix, graph)}
        return {i.name: self._cast(columns[i.name].reshape(-1, 1), i) for i in self.inputs}

    def _cast(self, values: Any, graph: Any, field: str | None = None) -> Any:
        np, dtype = self.np, _DTYPES[graph.type]
        if dtype == "object":  # strings: a missing one is the empty string
            return np.array([["" if v is None else str(v) for v in row]
                             for row in values.reshape(len(values), -1)], dtype=object)
        name = f"{graph.name!r}" + (f" (field {field!r})" if field and field != graph.name
                                    else "")

        def refuse(bad: Any, why: str) -> None:
            if bad.any():
                record = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
                raise TypeError(f"the ONNX input {name} takes {graph.type}; record {record} "
                                f"has {why}")
        if values.dtype == object:  # JSON values: None is missing, NaN to a float input
            missing = np.vectorize(lambda v: v is None, otypes=[bool])(values)
            if np.dtype(dtype).kind != "f":
                refuse(missing, "a missing value")
            values = np.where(missing, np.nan, values).astype("float64")
        kind, target = values.dtype.kind, np.dtype(dtype)
        if kind == "f" and target.kind != "f":
            refuse(np.isnan(values), "a missing value")
            refuse(values != np.trunc(values), "a number with a fraction")
        if target.kind in "iu" and kind in "iuf":
            info = np.iinfo(target)
            refuse((values < info.min) | (values > info.max), "a number out of its range")
        if target.kind == "b" and kind in "iuf":
            refuse((values != 0) & (values != 1), "a number that is not 0 or 1")
        with np.errstate(over="ignore", invalid="ignore"):  # refused next, by record
            out = values.astype(dtype, copy=False)
        if target.kind == "f" and kind in "iuf":
            refuse(np.isinf(out) & np.isfinite(values), "a number past its range")
        return out

    def _outputs(self, results: dict[str, Any]) -> dict[str, Any]:
        np = self.np
        label = next((results[n] for n in _LABELS if n in results), None)
        proba = next((results[n] for n in _PROBAS if n in results), None)
        if self.method == "predict_proba" and proba is not None:
            if self.kind == "tensors":
                return {self.outputs[0]: _matrix(np, proba)}
            fields = [n for n in self.outputs if n.startswith("proba_")]
            if isinstance(proba, list):  # ZipMap: {class: p} per row, matched by class
                out = _by_class(np, proba, fields)
            else:
                proba = np.asarray(proba)
                if proba.ndim != 2 or proba.shape[1] != len(fields):
                    raise ValueError(f"the ONNX graph gives probabilities of shape "
                                     f"{list(proba.shape)}; the contract has {len(fields)} "
                                     f"proba_ fields")
                out = {name: proba[:, i] for i, name in enumerate(fields)}
            if "prediction" in self.outputs and label is not None:
                out["prediction"] = np.asarray(label).ravel()
            return out
        name = next((n for n in _LABELS if n in results), self.output_names[0])
        if not isinstance(results[name], np.ndarray):
            raise TypeError(f"the ONNX output {name!r} is a sequence or map, not a tensor; "
                            "method 'predict' returns its label or its one tensor")
        value = results[name]
        if value.ndim == 2 and value.shape[1] == 1:  # a regressor's [rows, 1]
            value = value[:, 0]
        if self.kind == "records" and value.ndim != 1:
            raise TypeError(f"the ONNX output {name!r} has shape {list(value.shape)}: the "
                            f"field {self.outputs[0]!r} takes one value a record")
        return {self.outputs[0]: value}


def _fixed(dim: Any) -> int | None:
    """A dimension's fixed size; None for a symbolic or unknown one."""
    return dim if isinstance(dim, int) and dim > 0 else None


def _matrix(np: Any, proba: Any) -> Any:
    if isinstance(proba, list):  # ZipMap's maps, in their classes' order
        keys = list(proba[0]) if proba else []
        return np.array([[row[k] for k in keys] for row in proba], dtype="float64")
    return np.asarray(proba)


def _by_class(np: Any, maps: list[dict[Any, float]], fields: list[str]) -> dict[str, Any]:
    classes = {str(k): k for k in (maps[0] if maps else {})}
    wanted = [f[len("proba_"):] for f in fields]
    if maps and sorted(classes) != sorted(wanted):
        raise ValueError(f"the ONNX graph gives probabilities for classes {sorted(classes)}; "
                         f"the contract's proba_ fields are for {sorted(wanted)}")
    return {f: np.array([row[classes[c]] for row in maps], dtype="float64")
            for f, c in zip(fields, wanted, strict=True)}


# -- external data -------------------------------------------------------------------------
# A minimal protobuf reader, enough to find every TensorProto of an ONNX file (field numbers
# from onnx.proto3) and its external_data entries, without the onnx package.

#: Message -> {field: the message it holds}: the paths on which a TensorProto can sit.
_HOLDS = {"model": {7: "graph", 20: "training", 25: "function"},
          "training": {1: "graph", 2: "graph"},
          "graph": {1: "node", 5: "tensor", 15: "sparse"},
          "function": {7: "node"}, "node": {5: "attribute"},
          "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                        23: "sparse"},
          "sparse": {1: "tensor", 2: "tensor"}, "tensor": {13: "entry"}, "entry": {}}
_DEPTH = 64


def check_external_data(path: str | bytes) -> None:
    """Refuse an ONNX file that is not a protobuf, or a tensor whose external data is not a
    file inside the model's folder (absolute, ``..``, a link out, missing, too short)."""
    if isinstance(path, bytes):
        return _walk(memoryview(path), None, "the ONNX graph", b"location" in path)
    where = os.path.relpath(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{where} is empty, not an ONNX model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                _walk(view, os.path.dirname(os.path.realpath(path)), where,
                      mapped.find(b"location") >= 0)
            finally:
                view.release()


def _walk(data: memoryview, folder: str | None, where: str, deep: bool) -> None:
    """The file's fields; with ``deep``, those of every message that can hold a tensor too
    (without it, ModelProto's alone: an external tensor names its file under the key
    "location", which a file without those bytes cannot do, and a deep walk of a big tree
    ensemble's unpacked attributes takes a while)."""
    def message(kind: str, start: int, end: int, depth: int) -> dict[int, list[Any]]:
        if depth > _DEPTH:
            raise ValueError(f"{where}: messages nested deeper than {_DEPTH}")
        found: dict[int, list[Any]] = {}
        value: Any
        i = start
        while i < end:
            key, i = _varint(data, i, end, where)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(data, i, end, where)
            elif wire in (1, 5):
                i, value = i + (8 if wire == 1 else 4), None
            elif wire == 2:
                size, i = _varint(data, i, end, where)
                value, i = (i, i + size), i + size
            else:
                raise ValueError(f"{where} is not an ONNX model (byte {i}: wire type {wire})")
            if i > end:
                raise ValueError(f"{where} is not an ONNX model, or is truncated (a field "
                                 f"runs past byte {end})")
            inner = _HOLDS[kind].get(field)
            if inner is not None and wire == 2 and deep:
                value = message(inner, value[0], value[1], depth + 1)
                if inner == "tensor":
                    _tensor(value, data, folder, where)
            if field in (1, 2, 8, 14) or inner is not None:
                found.setdefault(field, []).append(value)
        return found
    message("model", 0, len(data), 0)


def _tensor(fields: dict[int, list[Any]], data: memoryview, folder: str | None,
            where: str) -> None:
    def text(span: Any) -> str:
        if not isinstance(span, tuple):
            return ""
        return bytes(data[span[0]:span[1]]).decode("utf-8", "replace")
    entries = {text(e.get(1, [None])[0]): text(e.get(2, [None])[0]) for e in fields.get(13, [])}
    if not entries and 1 not in fields.get(14, []):
        return
    name = text(fields.get(8, [None])[0])
    location = entries.get("location", "")
    said = f"{where}: tensor {name!r} keeps its data in {location!r}"
    if folder is None:
        raise ValueError(f"{said}, and a graph given as bytes has no folder for it")
    if not location or os.path.isabs(location) or "\\" in location:
        raise ValueError(f"{said}: external data must be a relative path inside the model's "
                         f"folder")
    target = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([target, folder]) != folder:
        raise ValueError(f"{said}, which is outside the model's folder")
    if not os.path.isfile(target):
        raise ValueError(f"{said}, which does not exist in the model's folder")
    try:
        offset, length = int(entries.get("offset") or 0), int(entries.get("length") or 0)
    except ValueError:
        raise ValueError(f"{said}, with an offset or length that is not a number") from None
    if offset < 0 or length < 0 or offset + length > os.path.getsize(target):
        raise ValueError(f"{said}, which is shorter than its offset {offset} and length "
                         f"{length}")


def _varint(data: memoryview, i: int, end: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError(f"{where} is not an ONNX model, or is truncated (byte {i})")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i
