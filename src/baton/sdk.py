"""What a data scientist calls from a notebook: turn a fitted model into a bundle.

    import baton
    baton.package(pipeline, sample=X_train, name="penguins", version="1.0.0")

The contract is inferred from the sample, the exact versions of every library the model
needs are pinned from the current environment, and sample rows with the model's own
outputs are stored so that ``baton check`` can prove the bundle reproduces them.
"""

from __future__ import annotations

import importlib.metadata as md
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from baton.bundle.manifest import (
    BundleManifest,
    EnvironmentSpec,
    ModelSpec,
    MonitoringSpec,
    SamplesSpec,
    ServingSpec,
)
from baton.contract.infer import MAX_INFERRED_CATEGORIES, infer_fields, infer_tensor
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.errors import BundleError
from baton.monitor.drift import reference_profile
from baton.runtime.runners import BUILTIN_ONNX, BUILTIN_SKLEARN

ARTIFACT = "model/model.pkl"
REFERENCE = "monitoring/reference.json"
_SKIP_DISTS = {"pip", "setuptools", "wheel", "baton"}


class PackagingWarning(UserWarning):
    """Something in a bundle that ``baton.package`` wrote may not do what the notebook did."""


def package(model: Any, sample: Any, *, name: str, version: str = "0.1.0",
            path: str | os.PathLike[str] | None = None, description: str = "", owner: str = "",
            method: str | None = None, sample_rows: int = 20, tolerance: float = 1e-6,
            workers: int = 0, code: Sequence[str | os.PathLike[str]] = (),
            extra_requirements: Iterable[str] = (), max_categories: int = MAX_INFERRED_CATEGORIES,
            ranges: bool = False, overwrite: bool = False, format: str = "pickle") -> Path:
    """Write a bundle folder for a fitted scikit-learn-compatible model; return its path.

    ``sample`` is a pandas DataFrame (a records contract) or a numpy array (a tensor
    contract) shaped like the model's training input. ``code`` lists local modules or
    packages the model's pickle refers to; they are copied into the bundle.
    ``format="onnx"`` converts the model with skl2onnx instead of pickling it: the bundle
    runs on the ``onnx`` runner, in an environment of onnxruntime and numpy
    (:mod:`baton.to_onnx`); its expected outputs stay the original model's.
    """
    if format not in ("pickle", "onnx"):
        raise BundleError(f"format must be 'pickle' or 'onnx', not {format!r}")
    method = method or ("predict_proba" if hasattr(model, "predict_proba") else "predict")
    if not callable(getattr(model, method, None)):
        raise BundleError(f"the model has no {method}() method")
    target = Path(path if path is not None else name)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise BundleError(f"{target} exists and is not empty (pass overwrite=True to replace)")

    records = _is_frame(sample)
    head = _pick_samples(sample, sample_rows) if records else sample[:sample_rows]
    if records:
        _warn_empty_columns(sample)
        fields = infer_fields(sample, max_categories=max_categories, ranges=ranges)
        inputs: tuple[FieldSpec, ...] | tuple[TensorSpec, ...] = fields
        outputs: tuple[FieldSpec, ...] | tuple[TensorSpec, ...] = \
            _record_outputs(model, method, head)
        sample_in: Any = _records_of(head)
        sample_out: Any = _predict_records(model, method, head)
    else:
        import numpy as np

        arr = np.asarray(sample)
        fields = ()
        tensor = infer_tensor(arr)
        inputs = (tensor,)
        result = np.asarray(getattr(model, method)(arr[:sample_rows]))
        outputs = (infer_tensor(result, name=method),)
        sample_in = {tensor.name: np.asarray(head).tolist()}
        sample_out = {method: result.tolist()}
    contract = Contract("records" if records else "tensors", inputs, outputs)

    if format == "onnx":
        from baton import to_onnx

        blob, artifact = to_onnx.convert(model, sample), to_onnx.ARTIFACT
        spec = ModelSpec("onnx", BUILTIN_ONNX, artifact, method)
        requirements = pinned_requirements(to_onnx.RUNTIME, records=False)
    else:
        blob, artifact = pickle.dumps(model, protocol=5), ARTIFACT
        spec = ModelSpec("python", BUILTIN_SKLEARN, artifact, method)
        requirements = pinned_requirements(_modules_in_pickle(blob), records=records,
                                           local=[Path(c) for c in code])
    requirements = _merge(requirements, extra_requirements)
    for pin, why in unreachable_pins(requirements):
        warnings.warn(f"the bundle pins {pin}, which {why}: no package index can provide it, "
                      "so its environment will not build unless a wheelhouse holds it "
                      "(baton serve --wheelhouse DIR)", PackagingWarning, stacklevel=2)
    manifest = BundleManifest(
        name=name, version=version, description=description, owner=owner,
        model=spec,
        environment=EnvironmentSpec(f"{sys.version_info.major}.{sys.version_info.minor}",
                                    tuple(requirements)),
        contract=contract,
        samples=SamplesSpec("samples/input.json", "samples/expected.json", tolerance),
        serving=ServingSpec(workers=workers),
        monitoring=MonitoringSpec(REFERENCE if records else None))
    BundleManifest.from_dict(manifest.to_dict())  # the same checks a reader applies

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        (tmp / artifact).parent.mkdir(parents=True, exist_ok=True)
        (tmp / artifact).write_bytes(blob)
        (tmp / "samples").mkdir()
        (tmp / "samples/input.json").write_text(_json(sample_in))
        (tmp / "samples/expected.json").write_text(_json(sample_out))
        if records:
            (tmp / "monitoring").mkdir()
            (tmp / REFERENCE).write_text(_json(reference_profile(sample, fields)))
        for src in map(Path, code):
            dest = tmp / src.name
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest)
        manifest.write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _warn_empty_columns(sample: Any) -> None:
    for name in sample.columns[sample.isna().all().to_numpy()]:
        warnings.warn(f"column {name!r} is missing in every row of the sample: its type in "
                      f"the contract ({sample[name].dtype}) is a guess; give the sample rows "
                      "where it has values, or correct the field in baton.toml",
                      PackagingWarning, stacklevel=3)


def _is_frame(sample: Any) -> bool:
    return type(sample).__name__ == "DataFrame" and hasattr(sample, "dtypes")


def _pick_samples(frame: Any, n: int) -> Any:
    """The first rows, plus up to a quarter of ``n`` rows with missing values if any."""
    missing = frame[frame.isna().any(axis=1)].head(max(1, n // 4))
    rest = frame.drop(index=missing.index).head(n - len(missing))
    return frame.loc[list(missing.index) + list(rest.index)]


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - the SDK needs pandas for DataFrames
        pass
    return v


def _records_of(frame: Any) -> list[dict[str, Any]]:
    cols = {c: [_plain(v) for v in frame[c].astype(object).tolist()] for c in frame.columns}
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _predict_records(model: Any, method: str, frame: Any) -> list[dict[str, Any]]:
    """The same outputs the runner computes for ``builtin:sklearn`` (see runner.predict)."""
    if method == "predict_proba":
        proba = model.predict_proba(frame)
        classes = model.classes_
        cols: dict[str, list[Any]] = {"prediction": [_plain(c) for c in
                                                     classes[proba.argmax(axis=1)]]}
        for i, c in enumerate(classes):
            cols[f"proba_{_plain(c)}"] = [float(p) for p in proba[:, i]]
    else:
        cols = {"prediction": [_plain(v) for v in model.predict(frame)]}
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _record_outputs(model: Any, method: str, head: Any) -> tuple[FieldSpec, ...]:
    import numpy as np

    if method == "predict_proba":
        classes = model.classes_
        if not all(re.fullmatch(r"[\w.-]+", str(c)) for c in classes):
            raise BundleError(f"class labels {list(classes)} must be simple names to become "
                              "output fields (proba_<class>)")
        kind = np.asarray(classes).dtype.kind
        ptype = {"i": "integer", "u": "integer", "b": "boolean"}.get(kind, "string")
        if ptype != "boolean" and kind not in "iuUO":
            raise BundleError(f"class labels of dtype {classes.dtype} are not supported")
        cats = tuple(_plain(c) for c in classes) if ptype != "boolean" else None
        specs = [FieldSpec("prediction", ptype, categories=cats)]
        specs += [FieldSpec(f"proba_{_plain(c)}", "float", min=0.0, max=1.0) for c in classes]
        return tuple(specs)
    pred = np.asarray(model.predict(head))
    kind = pred.dtype.kind
    ptype = {"f": "float", "i": "integer", "u": "integer", "b": "boolean"}.get(kind, "string")
    cats = None
    if hasattr(model, "classes_") and ptype in ("string", "integer"):
        cats = tuple(_plain(c) for c in model.classes_)
    return (FieldSpec("prediction", ptype, categories=cats),)


# -- Dependencies -------------------------------------------------------------------------

class _Recorder(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.modules.add(module)
        return super().find_class(module, name)


def _modules_in_pickle(blob: bytes) -> set[str]:
    rec = _Recorder(blob)
    rec.load()
    if "__main__" in rec.modules:
        raise BundleError("the model refers to objects defined in the notebook or script "
                          "itself (__main__); move them into a module and pass it with code=[...]")
    return rec.modules


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(modules: Iterable[str], *, records: bool,
                        local: Sequence[Path] = ()) -> list[str]:
    """Exact pins for the distributions providing ``modules``, and everything they need."""
    from packaging.requirements import Requirement

    owners = md.packages_distributions()
    local_names = {p.stem if p.is_file() else p.name for p in local}
    roots: set[str] = set()
    for mod in modules:
        top = mod.split(".")[0]
        if top in sys.stdlib_module_names or top in local_names or top == "builtins":
            continue
        dists = owners.get(top)
        if not dists:
            raise BundleError(f"the model uses module {top!r}, which no installed distribution "
                              "provides; pass its folder or file with code=[...]")
        roots.update(dists)
    if records:
        roots.add("pandas")  # the runner hands records to the model as a DataFrame
    pins: dict[str, str] = {}
    todo = sorted(roots)
    while todo:
        dist = todo.pop()
        key = _canon(dist)
        if key in pins or key in _SKIP_DISTS:
            continue
        try:
            pins[key] = md.version(dist)
        except md.PackageNotFoundError:
            continue
        for line in md.requires(dist) or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return [f"{k}=={v}" for k, v in sorted(pins.items())]


def unreachable_pins(pins: Iterable[str]) -> list[tuple[str, str]]:
    """The pins of installed distributions that no package index serves, and why.

    Offline and cheap: read from the installed metadata (PEP 610's ``direct_url.json``,
    written for installs from a folder, a file, a URL or version control; a local version
    label such as ``+cpu``), never from an index.
    """
    out = []
    for pin in pins:
        name, _, version = pin.partition("==")
        if not version:
            continue
        if "+" in version:
            out.append((pin, f"has a local version label (+{version.split('+', 1)[1]})"))
            continue
        try:
            text = md.distribution(name).read_text("direct_url.json")
        except md.PackageNotFoundError:
            continue
        if text:
            out.append((pin, f"was installed from {_origin(json.loads(text))}"))
    return out


def _origin(direct: dict[str, Any]) -> str:
    url = direct.get("url", "?")
    if "vcs_info" in direct:
        return f"{direct['vcs_info'].get('vcs', 'version control')} ({url})"
    if "dir_info" in direct:
        editable = " (editable)" if direct["dir_info"].get("editable") else ""
        return f"a local folder{editable} ({url})"
    return f"a file or URL ({url})"


def _merge(pins: list[str], extra: Iterable[str]) -> list[str]:
    merged = {_canon(p.split("==")[0]): p for p in pins}
    for p in extra:
        merged[_canon(re.split(r"[=<>!~;\[ ]", p, maxsplit=1)[0])] = p
    return sorted(merged.values())
