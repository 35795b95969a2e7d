"""``baton import mlflow DIR``: an MLflow model directory becomes a Baton bundle.

- the **contract** from the signature (:mod:`baton.importers.schema` says how MLflow's
  types map, and where its nullable and integer cases part from Baton's);
- the **requirements** locked: MLflow's top-level pins resolved by uv into exact pins of
  everything, for the Python version MLflow recorded (:mod:`baton.importers.lock`);
- the **model**: the sklearn flavor's pickle on the ``builtin:sklearn`` runner (mlflow left
  out of the environment), any other model through its python_function flavor by a small
  module, ``mlflow_model.py``, that calls ``mlflow.pyfunc.load_model`` in the model's own
  environment (which keeps mlflow);
- the **samples**: the input example, and what the model answers to it, computed by Baton's
  own worker in the model's environment (:mod:`baton.importers.running`).

The engine never imports mlflow, nor the model's libraries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from baton.batch import Batch
from baton.bundle.manifest import BundleManifest, EnvironmentSpec, ModelSpec, SamplesSpec
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.contract.validate import check_outputs
from baton.errors import BundleError, ContractViolation
from baton.importers.guard import inside
from baton.importers.lock import MLFLOW, find_python, lock, name_of
from baton.importers.mlmodel import MLflowModel, read_model
from baton.importers.running import (
    column_field,
    column_values,
    probe_sklearn,
    score_example,
)
from baton.importers.schema import (
    Decision,
    inferred_fields,
    is_tensor_signature,
    output_fields,
    records_fields,
    tensor_input,
)
from baton.runtime.runners import BUILTIN_SKLEARN
from baton.serving.opening import env_builder, env_note, open_local
from baton.settings import Settings

ARTIFACT = "model/model.pkl"
#: Where a python_function model's MLflow directory goes in the bundle, and its module.
MLFLOW_DIR = "model"
MODULE = "mlflow_model"
ENTRYPOINT = f"{MODULE}:MLflowModel"
_NAME = re.compile(r"[^a-z0-9._-]+")
_SIMPLE = re.compile(r"[\w.-]+")

WRAPPER = f'''"""Written by `baton import mlflow`: the MLflow model saved in {MLFLOW_DIR}/,
loaded and called by MLflow's own pyfunc loader, in this bundle's environment (which holds
mlflow). Baton itself never imports mlflow."""

import os


class MLflowModel:
    def load(self, bundle_dir):
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(os.path.join(bundle_dir, "{MLFLOW_DIR}"))

    def predict(self, inputs):
        import pandas as pd

        frame = inputs if isinstance(inputs, pd.DataFrame) else pd.DataFrame(inputs)
        result = self.model.predict(frame)
        if isinstance(result, pd.Series):
            return result.to_numpy()
        if getattr(result, "ndim", 0) == 2 and not isinstance(result, pd.DataFrame) \\
                and result.shape[1] == 1:
            return result[:, 0]
        return result  # a DataFrame: its columns are the outputs
'''


@dataclass
class ImportResult:
    """What ``import_mlflow`` wrote and decided, for the command's report."""

    path: Path
    manifest: BundleManifest
    flavor: str
    decisions: list[Decision]
    outputs_from: str
    pins: list[str]
    samples: int
    environment: str
    notes: list[str] = field(default_factory=list)


def import_mlflow(source: str | os.PathLike[str], output: str | os.PathLike[str],
                  settings: Settings, *, name: str | None = None,
                  version: str = "0.1.0") -> ImportResult:
    """Write the bundle for the MLflow model in ``source`` to ``output`` (a new or empty
    folder); build its environment and score its example there."""
    model = read_model(Path(source))
    target = Path(output)
    _check_target(target, model.path)
    name = name or (_NAME.sub("-", Path(source).resolve().name.lower()).strip("-._")
                    or "model")
    kind, inputs, decisions = _inputs(model)
    notes = list(model.notes)
    find_python(model.python_minor, model.python_from)
    top = _top_requirements(model, kind == "records", notes)
    pins = lock(top, model.python, source=model.requirements_file, offline=settings.offline,
                wheelhouse=settings.wheelhouse)
    env_spec = EnvironmentSpec(python=model.python_minor, requirements=tuple(pins))
    description = (f"Imported from MLflow {model.mlflow_version or ''} ({model.flavor} "
                   "flavor) by baton import mlflow").replace("  ", " ")
    base = BundleManifest(name=name, version=version, description=description,
                          model=_model_spec(model, "predict"), environment=env_spec,
                          contract=Contract(kind, inputs, _placeholder(model, kind, "predict")))
    BundleManifest.from_dict(base.to_dict())  # name and version checked before any build

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-")).resolve()
    try:
        _copy_model(model, tmp, notes)
        env = env_builder(settings).ensure(env_spec)
        method = "predict"
        classes: list[Any] | None = None
        if model.flavor == "sklearn":
            probe = probe_sklearn(env, tmp / ARTIFACT, tmp)
            method, classes = _method(probe, kind, notes)
        manifest = replace(base, model=_model_spec(model, method),
                         contract=Contract(kind, inputs, _placeholder(model, kind, method)))
        manifest.write(tmp)
        sample_in = _sample_inputs(model, inputs)
        raw = None
        if sample_in is not None:
            assert model.example is not None
            raw = score_example(open_local(tmp, settings), env, settings, sample_in,
                                model.example.file)
        outputs, outputs_from = _outputs(model, kind, method, classes, raw)
        contract = Contract(kind, inputs, outputs)
        samples = None
        if raw is not None and sample_in is not None:
            _check(contract, raw, model)
            (tmp / "samples").mkdir()
            _write_json(tmp / "samples/input.json", sample_in)
            _write_json(tmp / "samples/expected.json", _expected(contract, raw))
            samples = SamplesSpec("samples/input.json", "samples/expected.json", 1e-6)
        else:
            notes.append("no input example: the bundle has no samples, so baton check cannot "
                         "compare the model's answers")
        manifest = replace(manifest, contract=contract, samples=samples)
        BundleManifest.from_dict(manifest.to_dict())
        manifest.write(tmp)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = raw.rows if raw is not None else 0
    return ImportResult(target, manifest, model.flavor, decisions, outputs_from, pins, rows,
                        env_note(env), notes)


def _check_target(target: Path, source: Path) -> None:
    """``--output`` is a new or empty folder, not a link, and outside the model directory
    (whose whole content a python_function bundle copies)."""
    if target.is_symlink():
        raise BundleError(f"{target} is a symbolic link (to {os.readlink(target)}): give the "
                          "folder itself as --output", code="TARGET_EXISTS",
                          details={"output": str(target)})
    where, model = target.resolve(), source.resolve()
    if where == model or model in where.parents:
        raise BundleError(f"--output {target} is inside the model directory {source}: the "
                          "bundle copies from there; write it elsewhere",
                          code="TARGET_INSIDE_MODEL", details={"output": str(target)})
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not an empty folder", code="TARGET_EXISTS")


def _inputs(model: MLflowModel) -> tuple[Any, tuple[Any, ...], list[Decision]]:
    example = model.example
    records = example.records if example is not None else None
    if model.inputs is not None and is_tensor_signature(model.inputs):
        if model.flavor != "sklearn":
            raise BundleError(f"{model.path / 'MLmodel'}: signature.inputs is tensor-based: "
                              "only the sklearn flavor's tensor signatures are imported (a "
                              "python_function model needs a column-based signature)",
                              code="MLFLOW_UNSUPPORTED", details={"file": "MLmodel",
                                                                  "field": "signature.inputs"})
        spec = tensor_input(model.inputs)
        return "tensors", (spec,), [Decision(spec.name, f"tensor {spec.datatype} "
                                                        f"{list(spec.shape)}")]
    if model.inputs is not None:
        fields, decisions = records_fields(model.inputs, records)
        return "records", fields, decisions
    assert example is not None  # read_model refuses neither signature nor example
    if records is None:
        raise BundleError(f"{model.path / 'MLmodel'} has no signature and {example.file} is "
                          "not a table: save the model with a signature",
                          code="MLFLOW_NO_SIGNATURE", details={"file": "MLmodel",
                                                               "field": "signature"})
    model.notes.append(f"no signature in MLmodel: the contract is inferred from "
                       f"{example.file} ({len(records)} rows); save the model with "
                       "signature=infer_signature(X, model.predict(X)) to declare it")
    fields, decisions = inferred_fields(records, example.file)
    return "records", fields, decisions


def _top_requirements(model: MLflowModel, records: bool, notes: list[str]) -> list[str]:
    """MLflow's pins, less mlflow for a pickle; mlflow-skinny for python_function."""
    mlflow = [r for r in model.requirements if name_of(r) in MLFLOW]
    top = [r for r in model.requirements if name_of(r) not in MLFLOW]
    if model.flavor == "sklearn":
        if mlflow:
            notes.append(f"{', '.join(mlflow)} left out: the sklearn flavor's pickle needs "
                         "scikit-learn to load, not mlflow")
    else:
        pinned = [r.split("==", 1)[1].split(";")[0].strip() for r in mlflow]
        version = pinned[0] if pinned else model.mlflow_version
        if not version:
            raise BundleError(f"{model.path / model.requirements_file} pins no mlflow and "
                              "MLmodel has no mlflow_version: a python_function model needs "
                              "mlflow to load", code="MLFLOW_UNPINNED",
                              details={"file": model.requirements_file})
        top.append(f"mlflow-skinny=={version}")
        if {name_of(r) for r in mlflow} != {"mlflow-skinny"}:
            notes.append(f"{', '.join(mlflow) or 'mlflow'} locked as mlflow-skinny=={version}"
                         ": MLflow's pyfunc loader, without the tracking server and UI that "
                         "the full mlflow package adds")
    if records and "pandas" not in {name_of(r) for r in top}:
        top.append("pandas")
        notes.append("pandas added (its newest compatible version): the runner hands a "
                     "records model a DataFrame")
    return top


def _model_spec(model: MLflowModel, method: str) -> ModelSpec:
    if model.flavor == "sklearn":
        return ModelSpec("python", BUILTIN_SKLEARN, ARTIFACT, method)
    return ModelSpec("python", ENTRYPOINT, None, "predict")


def _copy_model(model: MLflowModel, tmp: Path, notes: list[str]) -> None:
    if model.flavor != "sklearn":
        shutil.copytree(model.path, tmp / MLFLOW_DIR,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tmp / f"{MODULE}.py").write_text(WRAPPER)
        return
    pickled = inside(model.path, model.conf["pickled_model"], "MLmodel",
                     "flavors.sklearn.pickled_model")
    if not pickled.is_file():
        raise BundleError(f"{model.path / 'MLmodel'}: flavors.sklearn.pickled_model names "
                          f"{pickled.name}, which is not in the folder", code="MLFLOW_INVALID",
                          details={"file": "MLmodel", "field": "flavors.sklearn.pickled_model"})
    (tmp / "model").mkdir()
    shutil.copy2(pickled, tmp / ARTIFACT)
    code = model.conf.get("code")
    if isinstance(code, str) and inside(model.path, code, "MLmodel",
                                        "flavors.sklearn.code").is_dir():
        for entry in sorted((model.path / code).iterdir()):
            if entry.name in ("model", "samples", "baton.toml", "__pycache__"):
                continue
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, tmp / entry.name)
            notes.append(f"{code}/{entry.name} copied beside the pickle (the model's own code)")


def _method(probe: dict[str, Any], kind: str,
            notes: list[str]) -> tuple[str, list[Any] | None]:
    """predict_proba for a classifier (on records, one whose labels can name output
    fields); else predict."""
    classes = probe.get("classes")
    if not probe.get("proba") or classes is None:
        notes.append(f"{probe.get('type')}: no predict_proba, so method predict")
        return "predict", None
    if kind == "tensors":
        notes.append(f"{probe.get('type')} is a classifier: method predict_proba (a tensor of "
                     f"the probabilities of {classes})")
        return "predict_proba", classes
    simple = all(isinstance(c, str | int) and not isinstance(c, bool)
                 and _SIMPLE.fullmatch(str(c)) for c in classes)
    if not simple or len({type(c) for c in classes}) != 1:
        notes.append(f"{probe.get('type')}: class labels {classes} cannot name output fields "
                     "(proba_<class>), so method predict")
        return "predict", None
    notes.append(f"{probe.get('type')} is a classifier: method predict_proba (prediction and "
                 "proba_<class>)")
    return "predict_proba", classes


def _placeholder(model: MLflowModel, kind: str, method: str) -> tuple[Any, ...]:
    """Outputs for the first start of the worker: only their names reach it."""
    if kind == "tensors":
        return (TensorSpec(method, "FP64", (-1,)),)
    names = [n for n, _, _ in output_fields(model.outputs)] or ["prediction"]
    if model.flavor == "sklearn":
        names = ["prediction"]
    return tuple(FieldSpec(n, "string") for n in names)


def _sample_inputs(model: MLflowModel, inputs: tuple[Any, ...]) -> Any:
    ex = model.example
    if ex is None:
        return None
    if isinstance(inputs[0], TensorSpec):
        if not isinstance(ex.tensor, list):
            raise BundleError(f"{ex.file} is not one array (a list of rows), but the signature "
                              "takes one tensor", code="MLFLOW_EXAMPLE_INVALID",
                              details={"file": ex.file})
        return {inputs[0].name: ex.tensor}
    if ex.records is None:
        raise BundleError(f"{ex.file} is not a table, but the signature takes columns",
                          code="MLFLOW_EXAMPLE_INVALID", details={"file": ex.file})
    return ex.records


def _outputs(model: MLflowModel, kind: str, method: str, classes: list[Any] | None,
             raw: Batch | None) -> tuple[tuple[Any, ...], str]:
    if kind == "tensors":
        if raw is None:
            raise BundleError("a tensor model needs an input example for its outputs to be "
                              "known: save it with input_example=", code="MLFLOW_NO_EXAMPLE")
        from baton.contract.infer import infer_tensor

        return (infer_tensor(raw.columns[method], name=method),), "what the model returned"
    if classes is not None:
        ptype = "integer" if isinstance(classes[0], int) else "string"
        specs = [FieldSpec("prediction", ptype, categories=tuple(classes))]
        specs += [FieldSpec(f"proba_{c}", "float", min=0.0, max=1.0) for c in classes]
        return tuple(specs), "the classifier's classes, by predict_proba"
    declared = output_fields(model.outputs)
    if model.flavor == "sklearn":
        declared = [("prediction", declared[0][1], declared[0][2])] if len(declared) == 1 else []
    if declared:
        if raw is None:
            untyped = [n for n, t, _ in declared if t is None]
            if untyped:
                raise BundleError(f"the signature does not type the outputs {untyped} and "
                                  "there is no input example to run", code="MLFLOW_NO_EXAMPLE")
            return tuple(FieldSpec(n, str(t), nb) for n, t, nb in declared), "the signature"
        missing = [n for n, _, _ in declared if n not in raw.columns]
        if missing:
            raise BundleError(f"the signature's outputs {missing} are not among what the model "
                              f"returned ({', '.join(raw.columns)})",
                              code="MLFLOW_OUTPUT_MISMATCH")
        return (tuple(column_field(n, raw.columns[n], t, nb) for n, t, nb in declared),
                "the signature, checked against the model's answers")
    if raw is None:
        raise BundleError("neither the signature's outputs nor an input example to run: the "
                          "outputs cannot be known", code="MLFLOW_NO_EXAMPLE")
    return (tuple(column_field(n, c) for n, c in raw.columns.items()),
            "what the model returned on the input example")


def _check(contract: Contract, raw: Batch, model: MLflowModel) -> None:
    try:
        check_outputs(contract, raw, raw.rows)
    except ContractViolation as exc:
        raise BundleError(f"the model's answers to {model.example.file if model.example else ''}"
                          f" break the output contract: {exc.message}",
                          code="MLFLOW_OUTPUT_MISMATCH", details=exc.details) from None


def _expected(contract: Contract, raw: Batch) -> Any:
    if contract.kind == "tensors":
        return {n: column_values(raw.columns[n]) for n in contract.output_names}
    cols = {n: column_values(raw.columns[n]) for n in contract.output_names}
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
