"""`baton import mlflow`: models saved by a real MLflow, in its own environment, become
bundles that `baton check` passes; the refusals name the file and the field.

The MLflow environment (mlflow-skinny, scikit-learn, pandas, pinned) is built once per
session with uv; nothing of MLflow is installed in Baton's own environment, and nothing here
is skipped when a piece is missing: a missing piece fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from baton.env.builder import uv_binary
from baton.errors import BundleError
from baton.importers.lock import find_python
from baton.importers.mlmodel import _yaml, read_model
from baton.importers.schema import records_fields, tensor_input
from tests.conftest import run_baton

# Every test of the file on one xdist worker: the MLflow models are saved once.
pytestmark = pytest.mark.xdist_group("mlflow")

MLFLOW = ["mlflow-skinny==3.17.2", "scikit-learn==1.9.1", "pandas==3.1.1"]

SAVE = textwrap.dedent('''
    import sys

    import mlflow.pyfunc
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression, LogisticRegression

    out = sys.argv[1]
    X = pd.DataFrame({"age": np.array([23, 45, 31, 52, 37, 29, 61, 44], dtype="int64"),
                      "income": [1.5, 3.2, 2.1, 4.8, 2.9, 1.9, 5.5, 3.3]})
    y = np.array(["no", "yes", "no", "yes", "yes", "no", "yes", "no"])
    clf = LogisticRegression().fit(X, y)
    mlflow.sklearn.save_model(clf, f"{out}/classifier", serialization_format="cloudpickle",
                              signature=infer_signature(X, clf.predict(X)),
                              input_example=X.head(4))
    A = X.to_numpy(dtype="float64")
    reg = LinearRegression().fit(A, X["income"].to_numpy() * 2)
    mlflow.sklearn.save_model(reg, f"{out}/regressor", serialization_format="pickle",
                              signature=infer_signature(A, reg.predict(A)), input_example=A[:3])


    class Total(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"total": model_input["amount"] * 2 + model_input["count"]})


    Xp = pd.DataFrame({"amount": [1.5, 2.0, None], "count": np.array([1, 2, 3], dtype="int64")})
    mlflow.pyfunc.save_model(f"{out}/custom", python_model=Total(), input_example=Xp,
                             signature=infer_signature(Xp, Total().predict(None, Xp)))
''')


def _uv(*args: str) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([uv_binary(), *args], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"uv {' '.join(args)} failed:\n{proc.stderr}"


@pytest.fixture(scope="session")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models saved by a real MLflow in its own uv environment: ``classifier`` (the
    sklearn flavor) and ``custom`` (a PythonModel)."""
    root = tmp_path_factory.mktemp("mlflow")
    venv = root / "venv"
    _uv("venv", "--quiet", "--python", "3.11", str(venv))
    _uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *MLFLOW)
    script = root / "save.py"
    script.write_text(SAVE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run([str(venv / "bin" / "python"), str(script), str(root / "models")],
                          env=dict(env, MLFLOW_TRACKING_URI=(root / "mlruns").as_uri()),
                          capture_output=True, text=True, timeout=300, cwd=root,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"MLflow could not save the models:\n{proc.stderr}"
    return root / "models"


def _manifest(bundle: Path) -> dict[str, Any]:
    return tomllib.loads((bundle / "baton.toml").read_text())


def _check(bundle: Path, env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    report = tmp_path / f"{bundle.name}-check.json"
    r = run_baton("check", bundle, "--iterations", "5", "--report", report, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def test_a_sklearn_classifier_becomes_a_builtin_sklearn_bundle(
        saved: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    bundle = tmp_path / "classifier"
    r = run_baton("import", "mlflow", saved / "classifier", "--output", "classifier",
                  "--name", "churn", "--version", "2.0.0", env=baton_env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "age: long → integer, not nullable" in r.stdout
    assert "income: double → float, not nullable" in r.stdout
    assert "mlflow==3.17.2 left out" in r.stdout
    assert r.stdout.rstrip().endswith("baton check classifier")

    m = _manifest(bundle)
    assert m["bundle"] == {**m["bundle"], "name": "churn", "version": "2.0.0"}
    assert m["model"] == {"runner": "python", "entrypoint": "builtin:sklearn",
                          "artifact": "model/model.pkl", "method": "predict_proba"}
    assert m["environment"]["python"] == "3.11"
    reqs = m["environment"]["requirements"]
    assert all(r.count("==") == 1 and ";" not in r for r in reqs), reqs
    names = {r.split("==")[0] for r in reqs}
    assert {"scikit-learn", "pandas", "numpy", "scipy", "joblib", "cloudpickle"} <= names
    assert not names & {"mlflow", "mlflow-skinny"}
    assert "scikit-learn==1.9.1" in reqs and "pandas==3.1.1" in reqs  # MLflow's own pins
    assert m["contract"]["inputs"] == [
        {"name": "age", "type": "integer", "dtype": "int64"},
        {"name": "income", "type": "float", "dtype": "float64"}]
    outputs = {o["name"]: o for o in m["contract"]["outputs"]}
    assert outputs["prediction"] == {"name": "prediction", "type": "string",
                                     "categories": ["no", "yes"]}
    assert set(outputs) == {"prediction", "proba_no", "proba_yes"}
    inputs = json.loads((bundle / "samples/input.json").read_text())
    expected = json.loads((bundle / "samples/expected.json").read_text())
    assert inputs[0] == {"age": 23, "income": 1.5} and len(inputs) == len(expected) == 4
    assert abs(expected[0]["proba_no"] + expected[0]["proba_yes"] - 1) < 1e-9

    report = _check(bundle, baton_env, tmp_path)
    assert report["passed"] is True


def test_a_python_model_runs_through_mlflow_in_its_own_environment(
        saved: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    bundle = tmp_path / "custom"
    r = run_baton("import", "mlflow", saved / "custom", "-o", bundle, env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "amount: double → float, nullable (required: false)" in r.stdout
    assert "count: long → integer, not nullable" in r.stdout

    m = _manifest(bundle)
    assert m["bundle"]["name"] == "custom" and m["bundle"]["version"] == "0.1.0"
    assert m["model"] == {"runner": "python", "entrypoint": "mlflow_model:MLflowModel",
                          "method": "predict"}
    reqs = m["environment"]["requirements"]
    assert "mlflow-skinny==3.17.2" in reqs and "cloudpickle==3.1.3" in reqs
    assert all(r.count("==") == 1 for r in reqs), reqs
    assert m["contract"]["inputs"] == [
        {"name": "amount", "type": "float", "nullable": True, "dtype": "float64"},
        {"name": "count", "type": "integer", "dtype": "int64"}]
    assert m["contract"]["outputs"] == [{"name": "total", "type": "float", "nullable": True}]
    assert (bundle / "model" / "MLmodel").is_file() and (bundle / "mlflow_model.py").is_file()
    assert json.loads((bundle / "samples/expected.json").read_text()) == [
        {"total": 4.0}, {"total": 6.0}, {"total": None}]

    report = _check(bundle, baton_env, tmp_path)
    assert report["passed"] is True
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["null_record"]["ok"] and "1 nullable field" in stages["null_record"]["note"]


def test_a_tensor_signature_becomes_a_tensors_contract(
        saved: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    bundle = tmp_path / "regressor"
    r = run_baton("import", "mlflow", saved / "regressor", "-o", bundle, env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    m = _manifest(bundle)
    assert m["model"]["entrypoint"] == "builtin:sklearn" and m["model"]["method"] == "predict"
    assert m["contract"]["kind"] == "tensors"
    assert m["contract"]["inputs"] == [{"name": "input-0", "datatype": "FP64",
                                        "shape": [-1, 2]}]
    assert m["contract"]["outputs"] == [{"name": "predict", "datatype": "FP64",
                                         "shape": [-1]}]
    expected = json.loads((bundle / "samples/expected.json").read_text())
    assert expected["predict"] == pytest.approx([3.0, 6.4, 4.2])
    assert _check(bundle, baton_env, tmp_path)["passed"] is True


def test_a_folder_without_mlmodel_is_refused(baton_env: dict[str, str],
                                             tmp_path: Path) -> None:
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "model.pkl").write_bytes(b"")
    r = run_baton("import", "mlflow", tmp_path / "notamodel", "-o", tmp_path / "b",
                  env=baton_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "MLFLOW_NOT_FOUND" in r.stderr and "no MLmodel in" in r.stderr
    assert not (tmp_path / "b").exists()


def test_an_unsupported_flavor_is_named_with_the_supported_ones(
        baton_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "h2o"
    src.mkdir()
    (src / "MLmodel").write_text("flavors:\n  h2o:\n    data: model.h2o\n"
                                 "mlflow_version: 3.17.2\n")
    r = run_baton("import", "mlflow", src, "-o", tmp_path / "b", env=baton_env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "MLFLOW_UNSUPPORTED" in r.stderr
    assert "flavors h2o cannot be imported" in r.stderr
    assert "sklearn and python_function" in r.stderr


def test_unpinned_requirements_and_a_missing_python_are_refused(saved: Path,
                                                                tmp_path: Path) -> None:
    src = tmp_path / "classifier"
    shutil.copytree(saved / "classifier", src)
    (src / "requirements.txt").write_text("scikit-learn>=1.0\npandas==3.1.1\n")
    with pytest.raises(BundleError, match=r"requirements.txt: 'scikit-learn>=1.0' is not "
                                          r"pinned") as err:
        read_model(src)
    assert err.value.code == "MLFLOW_UNPINNED"
    with pytest.raises(BundleError, match="this machine has no Python 3.99") as err:
        find_python("3.99", "python_env.yaml: python")
    assert err.value.code == "PYTHON_UNAVAILABLE"


def test_what_mlflow_wrote_is_read_without_mlflow(saved: Path) -> None:
    model = read_model(saved / "classifier")
    assert model.flavor == "sklearn" and model.conf["serialization_format"] == "cloudpickle"
    assert model.python_minor == "3.11" and model.python_from == "python_env.yaml: python"
    assert model.inputs == [{"type": "long", "name": "age", "required": True},
                            {"type": "double", "name": "income", "required": True}]
    assert model.example is not None and model.example.records is not None
    assert model.example.records[1] == {"age": 45, "income": 3.2}
    custom = read_model(saved / "custom")
    assert custom.flavor == "python_function"
    assert custom.example is not None and custom.example.records is not None
    assert custom.example.records[2] == {"amount": None, "count": 3}  # NaN in MLflow's JSON


def test_a_skops_model_goes_through_python_function(tmp_path: Path) -> None:
    """MLflow 3 saves scikit-learn models as skops by default: builtin:sklearn reads
    pickles only, so such a model is served by MLflow's own loader."""
    (tmp_path / "MLmodel").write_text(textwrap.dedent("""\
        flavors:
          python_function:
            loader_module: mlflow.sklearn
            model_path: model.skops
            python_version: 3.11.7
          sklearn:
            pickled_model: model.skops
            serialization_format: skops
        mlflow_version: 3.17.2
        signature:
          inputs: '[{"type": "double", "name": "x", "required": true}]'
          outputs: null
        """))
    (tmp_path / "requirements.txt").write_text("mlflow==3.17.2\nskops==0.13.0\n")
    model = read_model(tmp_path)
    assert model.flavor == "python_function" and model.requirements_file == "requirements.txt"
    assert "serialization_format is 'skops'" in model.notes[0]
    assert model.python == "3.11.7" and model.outputs is None and model.example is None


def test_the_nullable_and_integer_decisions() -> None:
    cols = [{"type": "long", "name": "n", "required": False},
            {"type": "double", "name": "x", "required": True},
            {"type": "double", "name": "y", "required": True},
            {"type": "integer", "name": "i"}, {"type": "float", "name": "f"},
            {"type": "string", "name": "s", "required": False},
            {"type": "boolean", "name": "b"}]
    fields, decisions = records_fields(cols, [{"n": 1, "x": 1.0, "y": None}])
    got = {f.name: (f.type, f.nullable, f.dtype) for f in fields}
    assert got == {"n": ("integer", False, "int64"), "x": ("float", False, "float64"),
                   "y": ("float", True, "float64"), "i": ("integer", False, "int32"),
                   "f": ("float", False, "float32"), "s": ("string", True, None),
                   "b": ("boolean", False, "bool")}
    said = {d.field: d.text for d in decisions}
    assert "required: false only lets MLflow callers leave the column out" in said["n"]
    assert said["y"] == "double → float, nullable (the input example has a null in row 0)"
    with pytest.raises(BundleError, match="MLflow cannot take a missing value") as err:
        records_fields([{"type": "long", "name": "n"}], [{"n": 1}, {"n": None}])
    assert err.value.code == "MLFLOW_NULLABLE_INTEGER"
    with pytest.raises(BundleError, match="'binary'"):
        records_fields([{"type": "binary", "name": "raw"}], None)
    tensor = tensor_input([{"type": "tensor", "tensor-spec": {"dtype": "float64",
                                                             "shape": [-1, 4]}}])
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input-0", "FP64", (-1, 4))


def test_the_yaml_files_are_read_as_plain_data_with_versions_as_text(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function:\n    env:\n      conda: conda.yaml\n"
        "    python_version: 3.10\nsignature:\n"
        "  inputs: '[{\"type\": \"long\", \"name\": \"age\", \"required\": true}]'\n"
        "  params: null\nmodel_size_bytes: 1234\n"
        "dependencies:\n- python=3.11.7\n- pip:\n  - mlflow==3.17.2\n  - 'it''s'\n")
    assert _yaml(tmp_path, "MLmodel") == {
        "flavors": {"python_function": {"env": {"conda": "conda.yaml"},
                                        "python_version": "3.10"}},
        "signature": {"inputs": '[{"type": "long", "name": "age", "required": true}]',
                      "params": None},
        "model_size_bytes": 1234,
        "dependencies": ["python=3.11.7", {"pip": ["mlflow==3.17.2", "it's"]}]}
    # Only plain data: a YAML tag that would build a Python object is refused.
    (tmp_path / "MLmodel").write_text("flavors: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BundleError) as info:
        _yaml(tmp_path, "MLmodel")
    assert info.value.code == "MLFLOW_INVALID"
