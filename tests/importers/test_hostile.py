"""`baton import mlflow` on a model directory made by someone else: links, paths out of the
directory, hostile YAML and JSON, option lines in the requirements and odd ``--output``
folders are refused with a BundleError naming the file and the field, before anything is
locked, built or run. Hand-written directories: no MLflow is needed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from baton.errors import BundleError
from baton.importers.mlmodel import read_model

MLMODEL = textwrap.dedent("""\
    flavors:
      python_function:
        loader_module: mlflow.sklearn
        model_path: model.pkl
        python_version: 3.11.7
      sklearn:
        pickled_model: model.pkl
        serialization_format: cloudpickle
    mlflow_version: 3.17.2
    signature:
      inputs: '[{"type": "double", "name": "x", "required": true}]'
      outputs: null
    """)


def model_dir(root: Path, mlmodel: str = MLMODEL, **files: str) -> Path:
    """A small MLflow model directory, as MLflow writes one, with ``files`` added."""
    src = root / "model"
    src.mkdir()
    (src / "MLmodel").write_text(mlmodel)
    (src / "model.pkl").write_bytes(b"not read")
    (src / "requirements.txt").write_text("mlflow==3.17.2\nscikit-learn==1.9.1\n")
    for name, text in files.items():
        (src / name).write_text(text)
    return src


def refused(src: Path, code: str, *words: str) -> BundleError:
    with pytest.raises(BundleError) as info:
        read_model(src)
    assert info.value.code == code, info.value
    for word in words:
        assert word in info.value.message, info.value.message
    return info.value


def test_the_hand_written_model_is_read(tmp_path: Path) -> None:
    model = read_model(model_dir(tmp_path))
    assert model.flavor == "sklearn" and model.requirements[1] == "scikit-learn==1.9.1"


@pytest.mark.parametrize("link", ["MLmodel", "model.pkl", "requirements.txt",
                                  "artifacts/secret", "artifacts"])
def test_a_symbolic_link_in_the_directory_is_refused(tmp_path: Path, link: str) -> None:
    """A link to a file outside (a key in the user's home) would be read, or copied into
    the bundle: MLflow never writes links, so any link is refused, naming it."""
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY\n")
    src = model_dir(tmp_path)
    (src / "artifacts").mkdir()
    target = src / link
    if target.is_dir():
        target.rmdir()
    elif target.exists():
        target.unlink()
    os.symlink(secret.parent if link == "artifacts" else secret, target)
    err = refused(src, "MLFLOW_UNSAFE_PATH", link, "a symbolic link", str(secret.parent))
    assert err.details["file"] == link


def test_a_link_looping_back_into_the_directory_is_refused(tmp_path: Path) -> None:
    src = model_dir(tmp_path)
    os.symlink(".", src / "loop")
    refused(src, "MLFLOW_UNSAFE_PATH", "loop", "a symbolic link")


def test_a_pipe_in_the_directory_is_refused(tmp_path: Path) -> None:
    """Copying a named pipe blocks (or fails with a traceback): refused first."""
    src = model_dir(tmp_path)
    os.mkfifo(src / "artifacts.fifo")
    refused(src, "MLFLOW_UNSAFE_PATH", "artifacts.fifo", "not a regular file")


@pytest.mark.parametrize(("field", "line", "value"), [
    ("flavors.sklearn.pickled_model", "    pickled_model: model.pkl", "../secret.pkl"),
    ("flavors.sklearn.pickled_model", "    pickled_model: model.pkl", "/etc/passwd"),
    ("flavors.python_function.model_path", "    model_path: model.pkl", "a/../../x"),
    ("flavors.sklearn.code", "    serialization_format: cloudpickle", "../.."),
    ("flavors.python_function.artifacts.weights.path", "    loader_module: mlflow.sklearn",
     "/home/someone/.ssh"),
    ("flavors.python_function.env.conda", "    loader_module: mlflow.sklearn", "../conda.yaml"),
    ("saved_input_example_info.artifact_path", "mlflow_version: 3.17.2",
     "../../other.json"),
])
def test_a_path_in_mlmodel_leading_out_of_the_directory_is_refused(
        tmp_path: Path, field: str, line: str, value: str) -> None:
    """pickled_model, code and the example were read or copied from wherever they
    pointed (the code folder's entries went into the bundle): now refused, naming the
    field."""
    (tmp_path / "secret.pkl").write_bytes(b"x")
    (tmp_path / "other.json").write_text('{"x": 1.0}')
    key = field.rsplit(".", 1)[1]
    if field.endswith("artifacts.weights.path"):
        added = f"{line}\n    artifacts:\n      weights:\n        path: {value}"
    elif field.endswith("env.conda"):
        added = f"{line}\n    env:\n      conda: {value}"
    elif field.endswith("code"):
        added = f"{line}\n    code: {value}"
    elif field.startswith("saved_input_example_info"):
        added = f"{line}\nsaved_input_example_info:\n  artifact_path: {value}"
    else:
        added = line.replace("model.pkl", value)
    assert key in added
    src = model_dir(tmp_path, MLMODEL.replace(line, added))
    err = refused(src, "MLFLOW_UNSAFE_PATH", "MLmodel", field, "leads out of the model")
    assert err.details == {"file": "MLmodel", "field": field}


@pytest.mark.parametrize("version", ['"3.17.2\\n--index-url http://127.0.0.1:9/simple"',
                                     '"3.17.2 ; python_version > \'3\' -r /etc/passwd"',
                                     "[3, 17]"])
def test_an_mlflow_version_that_is_not_a_version_is_refused(tmp_path: Path,
                                                            version: str) -> None:
    """A python_function model whose requirements pin no mlflow is locked with
    mlflow-skinny==<mlflow_version>: a newline there wrote an option line
    (--index-url, -r) into the lock's requirements, and uv fetched from that index."""
    text = MLMODEL.replace("mlflow_version: 3.17.2", f"mlflow_version: {version}")
    src = model_dir(tmp_path, text.replace("      sklearn:\n", "      other:\n"))
    (src / "requirements.txt").write_text("scikit-learn==1.9.1\n")
    err = refused(src, "MLFLOW_INVALID", "MLmodel: mlflow_version must be a version")
    assert err.details == {"file": "MLmodel", "field": "mlflow_version"}
