"""The ONNX runner (onnx_model.py) against hostile or sloppy bundles and requests: files that
are not ONNX, tensors whose external data points outside the bundle, graphs whose inputs do
not fit the contract, values an input's type cannot hold, and skl2onnx's ZipMap outputs.
Real onnxruntime throughout; the load failures also through the engine's own Worker, which
must say why."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import uvloop
from onnx import TensorProto, helper, numpy_helper

from baton.errors import ModelLoadError
from baton.runtime.onnx_model import OnnxModel
from baton.runtime.runners import ONNX
from baton.runtime.worker import Worker, WorkerSpec

FLOAT, DOUBLE, INT64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, \
    TensorProto.BOOL


def graph(inputs: list[tuple[str, int, list[Any]]], nodes: list[Any],
          out: tuple[int, list[Any]] = (FLOAT, [None, 1]), init: list[Any] | None = None,
          ) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info("y", *out)], init or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def identity(dtype: int = FLOAT, shape: list[Any] | None = None) -> onnx.ModelProto:
    shape = shape or [None, 1]
    return graph([("x", dtype, shape)], [helper.make_node("Identity", ["x"], ["y"])],
                 (dtype, shape))


def records(names: list[str], method: str = "predict",
            outputs: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "records", "inputs": names, "outputs": outputs or ["prediction"],
            "model": {"method": method}}


def external(location: str) -> onnx.ModelProto:
    """y = x + w, with w's four floats "external": in the file at ``location``."""
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    return graph([("x", FLOAT, [None, 4])], [helper.make_node("Add", ["x", "w"], ["y"])],
                 (FLOAT, [None, 4]), [w])


def load(bundle: Path, model: onnx.ModelProto | bytes, config: dict[str, Any]) -> OnnxModel:
    path = bundle / "model" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return OnnxModel(str(path), {**config, "bundle_dir": str(bundle)})


def test_external_data_outside_the_model_folder_is_refused_whatever_onnxruntime_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime 1.32 checks external data paths itself; the versions a bundle may pin
    before it read them, relative to the model's folder. The runner checks first."""
    bundle = tmp_path / "bundle"
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (bundle / "model").mkdir(parents=True)
    (bundle / "model" / "link.bin").symlink_to(tmp_path / "secret.bin")
    monkeypatch.chdir(bundle)
    config = {"kind": "tensors", "inputs": ["x"], "outputs": ["y"],
              "model": {"method": "predict"}}
    cases = {"../../secret.bin": "outside the model's folder",
             str(tmp_path / "secret.bin"): "must be a relative path",
             "/etc/passwd": "must be a relative path",
             "link.bin": "outside the model's folder",
             "missing.bin": "does not exist in the model's folder"}
    for location, why in cases.items():
        with pytest.raises(ValueError, match=rf"model/model.onnx: tensor 'w' keeps its data "
                                             rf"in '{location}'.*{why}"):
            load(bundle, external(location), config)
    (bundle / "model" / "short.bin").write_bytes(b"\0" * 8)  # 4 floats need 16 bytes
    model = external("short.bin")
    length = model.graph.initializer[0].external_data.add()
    length.key, length.value = "length", "16"
    with pytest.raises(ValueError, match="shorter than its offset 0 and length 16"):
        load(bundle, model, config)
    (bundle / "model" / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())  # inside: runs
    got = load(bundle, external("w.bin"), config).predict({"x": np.zeros((2, 4))})
    assert got["y"].tolist() == [[1.0] * 4] * 2


def test_a_file_that_is_not_onnx_or_is_cut_short_says_so(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    whole = identity().SerializeToString()
    cases = {b"": "is empty, not an ONNX model",
             b"<html>not a model</html>": "is not an ONNX model",
             whole[:len(whole) // 2]: "is not an ONNX model, or is truncated"}
    for data, message in cases.items():
        with pytest.raises(ValueError, match=f"^model/model.onnx {message}"):
            load(tmp_path, data, records(["x"]))
    custom = graph([("x", FLOAT, [None, 1])], [helper.make_node("Magic", ["x"], ["y"],
                                                                domain="com.example")])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ValueError, match="^model/model.onnx: onnxruntime cannot load it: .*"
                                         "com.example:Magic"):
        load(tmp_path, custom, records(["x"]))


def test_inputs_that_cannot_take_the_contract_are_refused_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each was a failure of every request ("too many values to unpack", or onnxruntime's
    "invalid dimensions") on a worker that said it was ready."""
    monkeypatch.chdir(tmp_path)
    two = graph([("x", FLOAT, [None, 2]), ("z", FLOAT, [None, 2])],
                [helper.make_node("Add", ["x", "z"], ["y"])], (FLOAT, [None, 2]))
    tensors = {"kind": "tensors", "inputs": ["t"], "outputs": ["y"],
               "model": {"method": "predict"}}
    with pytest.raises(ValueError, match="a tensors contract feeds one input; the graph "
                                         "takes 2: 'x' tensor.float. .None, 2."):
        load(tmp_path, two, tensors)
    with pytest.raises(ValueError, match=r"the input 'x' tensor\(float\) \[None, 2\] cannot "
                                         r"take the contract's 3 columns as \[rows, 3\]"):
        load(tmp_path, identity(shape=[None, 2]), records(["a", "b", "c"]))
    with pytest.raises(ValueError, match="cannot take the contract's field 'x' as a column"):
        load(tmp_path, two, records(["x", "z"]))
    bfloat16 = identity(TensorProto.BFLOAT16)
    with pytest.raises(TypeError, match=r"'x' tensor\(bfloat16\).*element type this runner "
                                        r"cannot feed"):
        load(tmp_path, bfloat16, records(["x"]))


def test_a_graph_with_a_batch_of_one_serves_a_batch_of_a_hundred(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = load(tmp_path, identity(shape=[1, 3]), {"kind": "tensors", "inputs": ["t"],
                                                     "outputs": ["y"],
                                                     "model": {"method": "predict"}})
    x = np.arange(300.0).reshape(100, 3)
    got = model.predict({"t": x})
    assert got["y"].shape == (100, 3) and got["y"].tolist() == x.tolist()
    assert model.predict({"t": np.zeros((0, 3))})["y"].shape == (0,)  # was an IndexError


def test_values_an_input_type_cannot_hold_are_refused_by_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nullable integer field travels as FP64: whole numbers were refused ("a fraction or a
    missing value") though they fit; 0.5 reached a bool input as True, 1e39 a float input as
    inf, 70000 a float16 one as inf, None an int64 one as Python's own TypeError."""
    monkeypatch.chdir(tmp_path)
    ints = load(tmp_path, identity(INT64), records(["x"]))
    assert ints.predict({"x": np.array([3.0, -2.0])})["prediction"].tolist() == [3, -2]
    refused = {"bool": (identity(BOOL), np.array([1.0, 0.5]), "record 1 has a number with a "
                        "fraction"),
               "bool2": (identity(BOOL), np.array([1, 2]), "record 1 has a number that is "
                         "not 0 or 1"),
               "nan": (identity(INT64), np.array([1.0, np.nan]), "record 1 has a missing value"),
               "none": (identity(INT64), [4, None], "record 1 has a missing value"),
               "fraction": (identity(INT64), np.array([1.5]), "record 0 has a number with a "
                            "fraction"),
               "float": (identity(FLOAT), np.array([1.0, 1e39]), "record 1 has a number past "
                         "its range"),
               "half": (identity(TensorProto.FLOAT16), np.array([7e4]), "record 0 has a "
                        "number past its range"),
               "uint8": (identity(TensorProto.UINT8), np.array([300]), "record 0 has a number "
                         "out of its range")}
    for name, (model, values, message) in refused.items():
        with pytest.raises(TypeError, match=rf"the ONNX input 'x' takes tensor\(\w+\); "
                                            rf"{message}"):
            load(tmp_path, model, records(["x"])).predict({"x": values})
        assert name
    doubles = load(tmp_path, identity(DOUBLE), records(["x"]))  # None is NaN, as in pandas
    assert np.isnan(doubles.predict({"x": [1.0, None]})["prediction"][1])


def test_zipmap_probabilities_are_matched_to_the_proba_fields_by_class(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """skl2onnx's default classifier (ZipMap on) answers ``output_probability``, a list of
    {class: p}: its probabilities were lost (an output contract violation)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).random((30, 2)).astype(np.float32)
    y = np.array(["b", "a", "c"] * 10)
    fitted = LogisticRegression().fit(x, y)
    model = load(tmp_path, to_onnx(fitted, x[:2], target_opset=17),
                 records(["f0", "f1"], "predict_proba",
                         ["prediction", "proba_c", "proba_a", "proba_b"]))
    got = model.predict({"f0": x[:5, 0], "f1": x[:5, 1]})
    want = fitted.predict_proba(x[:5])
    for i, cls in enumerate(fitted.classes_):
        assert np.allclose(got[f"proba_{cls}"], want[:, i], atol=1e-5), cls
    assert got["prediction"].tolist() == fitted.predict(x[:5]).tolist()
    wrong = load(tmp_path, to_onnx(fitted, x[:2], target_opset=17),
                 records(["f0", "f1"], "predict_proba", ["prediction", "proba_x", "proba_y"]))
    with pytest.raises(ValueError, match=r"probabilities for classes \['a', 'b', 'c'\]; the "
                                         r"contract's proba_ fields are for \['x', 'y'\]"):
        wrong.predict({"f0": x[:1, 0], "f1": x[:1, 1]})


def test_a_worker_whose_model_reads_outside_the_bundle_says_why(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "model").mkdir(parents=True)
    (tmp_path / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (bundle / "model" / "model.onnx").write_bytes(
        external("../../weights.bin").SerializeToString())
    spec = WorkerSpec(
        model="outside", python=Path(sys.executable), bundle_dir=bundle, runner=ONNX,
        load_timeout=60,
        load={"model": {"runner": "onnx", "entrypoint": "builtin:onnx",
                        "artifact": "model/model.onnx", "method": "predict"},
              "kind": "tensors", "inputs": ["x"], "outputs": ["y"], "fields": []})

    async def body() -> None:
        worker = Worker(spec, 0)
        try:
            with pytest.raises(ModelLoadError, match="model/model.onnx: tensor 'w' keeps its "
                                                     "data in '../../weights.bin', which is "
                                                     "outside the model's folder"):
                await worker.start()
        finally:
            await worker.stop(grace=10)
        assert worker.state != "ready"
    uvloop.run(asyncio.wait_for(body(), 120))


def test_outputs_the_contract_cannot_hold_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A [rows, 3] output went to a records field as three values a record; predict_proba on
    a graph without probabilities failed every request with the engine's 'model output lacks
    proba_a'."""
    monkeypatch.chdir(tmp_path)
    wide = load(tmp_path, identity(shape=[None, 3]), records(["a", "b", "c"]))
    with pytest.raises(TypeError, match=r"the ONNX output 'y' has shape \[2, 3\]: the field "
                                        r"'prediction' takes one value a record"):
        wide.predict({"a": np.ones(2), "b": np.ones(2), "c": np.ones(2)})
    with pytest.raises(ValueError, match=r"method 'predict_proba' fills proba_a, proba_b "
                                         r"from an output named probabilities or "
                                         r"output_probability; the graph's outputs are y"):
        load(tmp_path, identity(), records(["x"], "predict_proba",
                                           ["prediction", "proba_a", "proba_b"]))
