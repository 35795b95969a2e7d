"""``baton.package(..., format="onnx")``: a scikit-learn model as an ONNX graph, for the
``onnx`` runner (docs/manifest.md#model).

skl2onnx converts the fitted model in the data scientist's session; the bundle then holds
``model.onnx`` and an environment of onnxruntime and numpy, without scikit-learn. The
expected outputs are still the original model's, so ``baton check`` proves the graph gives
the same answers within the bundle's tolerance, and reports the largest difference.

A tensors contract's sample gives the graph one input of its element type; a records
contract's DataFrame gives one input per column, named after it (numbers as doubles, text
as strings, integers as int64). Classifiers give ``label`` and a ``probabilities`` matrix
(skl2onnx's ``zipmap`` off).
"""

from __future__ import annotations

from typing import Any

from baton.errors import BundleError

ARTIFACT = "model/model.onnx"
#: The distributions the bundle's environment needs to run the graph.
RUNTIME = ("onnxruntime", "numpy")


def convert(model: Any, sample: Any) -> bytes:
    """The model as a serialized ONNX graph that onnxruntime loads and runs on the sample's
    first rows: with the sample's own number types (doubles), or else with floats (some
    skl2onnx converters, such as the tree ensembles', make double graphs onnxruntime
    refuses); a clear error when neither works."""
    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise BundleError("format='onnx' needs skl2onnx and onnxruntime where the model is "
                          "packaged: pip install 'baton[onnx]'") from None
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    head = sample.iloc[:5] if hasattr(sample, "iloc") else sample[:5]
    failures = []
    for width in ("float64", "float32"):
        typed = _typed(head, width)
        try:
            data: bytes = to_onnx(model, typed, options=options).SerializeToString()
            _runs(data, typed)
            return data
        except Exception as exc:  # skl2onnx and onnxruntime raise many kinds: say which
            failures.append(f"with {width} inputs, {type(exc).__name__}: {exc}")
    raise BundleError(f"skl2onnx cannot convert this {type(model).__name__} to an ONNX graph "
                      f"onnxruntime runs: {'; '.join(failures)}")


def _runs(data: bytes, typed: Any) -> None:
    """Run the graph on ``typed`` as the onnx runner will (:class:`OnnxModel`: the same
    feeds and casts); raises what it raises."""
    from baton.runtime.onnx_model import OnnxModel

    records = hasattr(typed, "columns")
    names = [str(c) for c in typed.columns] if records else ["input"]
    inputs = {n: typed[n].to_numpy() for n in names} if records else {"input": typed}
    config = {"kind": "records" if records else "tensors", "inputs": names,
              "outputs": ["prediction"], "model": {"method": "predict"}}
    OnnxModel(data, config).predict(inputs)


def _typed(head: Any, width: str) -> Any:
    """The sample with types skl2onnx maps to one input each: integers stay int64, other
    numbers become ``width`` floats, anything else text."""
    if not hasattr(head, "columns"):
        import numpy as np

        arr = np.asarray(head)
        return arr.astype(width) if arr.dtype.kind == "f" else arr
    out = head.copy()
    for name in out.columns:
        kind = out[name].dtype.kind
        if kind in "iu":
            out[name] = out[name].astype("int64")
        elif kind in "fb":
            out[name] = out[name].astype(width)
        else:
            out[name] = out[name].astype(str)
    return out
