"""The ONNX runner's model (``runner = "onnx"``): an ``.onnx`` file run by onnxruntime.

Like runner.py, this file runs with the *model's* interpreter, in an environment that holds
onnxruntime and numpy and not the framework the model was trained with; the runner loads it
by its path (never from ``sys.path``) and calls it as a model with ``predict(inputs)``.

Inputs: a tensors contract's tensor goes to the graph's one input; a records contract's
columns go to the graph's inputs of the same names, each as a column ``[rows, 1]`` (what
skl2onnx makes of a DataFrame's columns), or, to a graph with one input, side by side as
one ``[rows, columns]`` matrix in the contract's order. Each is cast to the input's
element type. Outputs: skl2onnx's classifiers give ``label`` and ``probabilities``;
``predict_proba`` takes the probabilities (a records contract's ``proba_*`` fields are
their columns, in order), ``predict`` the label or, for a regressor, the one output.
"""

from __future__ import annotations

import os
from typing import Any

#: ONNX element types -> numpy dtypes for the inputs a runner feeds.
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
           "tensor(string)": "object"}


class OnnxModel:
    def __init__(self, path: str | bytes, config: dict[str, Any]) -> None:
        """``path``: the .onnx file (or the graph's bytes); ``config``: the ``load``
        message (kind, inputs, outputs, model.method)."""
        import numpy as np
        import onnxruntime as ort

        self.np = np
        options = ort.SessionOptions()
        threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kind = config["kind"]
        self.names = config["inputs"]
        self.outputs = config["outputs"]
        self.method = config["model"].get("method", "predict")
        if self.kind == "records" and len(self.inputs) > 1:
            missing = [i.name for i in self.inputs if i.name not in self.names]
            if missing:
                raise ValueError(f"the ONNX graph takes inputs {missing} that the contract "
                                 f"does not have (contract: {self.names})")

    def predict(self, inputs: Any) -> dict[str, Any]:
        feeds = self._feeds(inputs)
        results = dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        return self._outputs(results)

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        np = self.np
        if self.kind == "tensors":
            (graph,) = self.inputs
            return {graph.name: self._cast(np.asarray(inputs[self.names[0]]), graph)}
        columns = {n: np.asarray(inputs[n]) for n in self.names}
        if len(self.inputs) == 1:  # one matrix, the columns side by side
            (graph,) = self.inputs
            matrix = np.column_stack([columns[n] for n in self.names])
            return {graph.name: self._cast(matrix, graph)}
        return {i.name: self._cast(columns[i.name].reshape(-1, 1), i) for i in self.inputs}

    def _cast(self, values: Any, graph: Any) -> Any:
        dtype = _DTYPES.get(graph.type)
        if dtype is None:
            raise TypeError(f"the ONNX input {graph.name!r} has type {graph.type}, which "
                            f"this runner cannot feed")
        if dtype == "object":  # strings: a missing one is the empty string
            return self.np.array([["" if v is None else str(v) for v in row]
                                  for row in values.reshape(len(values), -1)], dtype=object)
        if dtype in ("int64", "int32") and values.dtype.kind == "f":
            raise TypeError(f"the ONNX input {graph.name!r} takes integers; got numbers "
                            f"with a fraction or a missing value")
        return values.astype(dtype, copy=False)

    def _outputs(self, results: dict[str, Any]) -> dict[str, Any]:
        np = self.np
        proba, label = results.get("probabilities"), results.get("label")
        if self.method == "predict_proba" and proba is not None:
            proba = np.asarray(proba)
            if self.kind == "tensors":
                return {self.outputs[0]: proba}
            fields = [n for n in self.outputs if n.startswith("proba_")]
            if proba.shape[1] != len(fields):
                raise ValueError(f"the ONNX graph gives {proba.shape[1]} probabilities; the "
                                 f"contract has {len(fields)} proba_ fields")
            out = {name: proba[:, i] for i, name in enumerate(fields)}
            if "prediction" in self.outputs and label is not None:
                out["prediction"] = np.asarray(label).ravel()
            return out
        value = np.asarray(label if label is not None else results[self.output_names[0]])
        if value.ndim == 2 and value.shape[1] == 1:  # a regressor's [rows, 1]
            value = value[:, 0]
        return {self.outputs[0]: value}
