"""`baton import mlflow` on a model directory made by someone else: links, paths out of the
directory, hostile YAML and JSON, option lines in the requirements and odd ``--output``
folders are refused with a BundleError naming the file and the field, before anything is
locked, built or run. Hand-written directories: no MLflow is needed."""

from __future__ import annotations

import json
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


#: A billion laughs: nine levels of ten aliases, small as text, 10**9 strings once walked.
LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
SIGNATURE = '  inputs: \'[{"type": "double", "name": "x", "required": true}]\''


@pytest.mark.parametrize(("file", "text", "words"), [
    ("MLmodel", LAUGHS + MLMODEL.replace(SIGNATURE, "  inputs: *a8"),
     ["signature.inputs must be a JSON list"]),
    ("MLmodel", LAUGHS + MLMODEL.replace("serialization_format: cloudpickle",
                                         "serialization_format: *a8")
     .replace("    pickled_model: model.pkl\n", ""), ["serialization_format"]),
    ("python_env.yaml", LAUGHS + "python: *a8\n", ["python must be a Python version"]),
    ("conda.yaml", LAUGHS + "dependencies:\n- pip: *a8\n", ["dependencies.pip must list"]),
], ids=["signature", "serialization_format", "python", "pip"])
def test_yaml_full_of_aliases_is_refused_without_being_walked(
        tmp_path: Path, file: str, text: str, words: list[str]) -> None:
    """PyYAML builds the aliases as shared objects; the errors (and a note) quoted the
    value with repr(), and conda.yaml's pip list was str()-ed: a walk of 10**9 strings
    that ran out of time or memory. The value is now quoted cut short."""
    src = model_dir(tmp_path)
    (src / file).write_text(text)
    if file == "conda.yaml":
        (src / "requirements.txt").unlink()
    if file == "MLmodel" and "serialization_format" in words:
        model = read_model(src)  # served through python_function, with a note
        assert len(model.notes[0]) < 400 and "serialization_format is [[[" in model.notes[0]
        return
    err = refused(src, "MLFLOW_INVALID", file, *words)
    assert len(err.message) < 600


@pytest.mark.parametrize("file", ["MLmodel", "conda.yaml", "python_env.yaml"])
def test_yaml_nested_too_deeply_is_refused(tmp_path: Path, file: str) -> None:
    """Before: a RecursionError traceback from PyYAML's composer."""
    src = model_dir(tmp_path)
    deep = "deep: " + "[" * 5000 + "]" * 5000 + "\n"
    (src / file).write_text((MLMODEL if file == "MLmodel" else "") + deep)
    refused(src, "MLFLOW_INVALID", f"{file} cannot be read: nested too deeply")


@pytest.mark.parametrize(("file", "size"), [("MLmodel", 5 << 20),
                                            ("requirements.txt", 5 << 20),
                                            ("input_example.json", 17 << 20)])
def test_a_huge_file_is_refused_unread(tmp_path: Path, file: str, size: int) -> None:
    """Before: read whole and parsed (an input example of any size became the samples)."""
    src = model_dir(tmp_path)
    if file == "input_example.json":
        (src / file).write_text('{"x": [' + "1.0, " * (size // 5) + "1.0]}")
    else:
        with open(src / file, "a") as f:
            f.write("# padding\n" * (size // 10))
    err = refused(src, "MLFLOW_INVALID", file, "MiB")
    assert err.details["file"] == file


def test_flavor_names_must_be_text(tmp_path: Path) -> None:
    """Before: a TypeError traceback from joining the flavor names into the refusal."""
    src = model_dir(tmp_path, "flavors:\n  1: {}\n  2: {}\n")
    refused(src, "MLFLOW_INVALID", "MLmodel: flavors must be a mapping of flavor names")


def test_requirements_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    """Before: a UnicodeDecodeError traceback."""
    src = model_dir(tmp_path)
    (src / "requirements.txt").write_bytes(b"scikit-learn==1.9.1\n\xff\xfe\n")
    refused(src, "MLFLOW_INVALID", "requirements.txt cannot be read")


@pytest.mark.parametrize(("inputs", "words"), [
    ('[{"type": ["double"], "name": "x"}]', "column 'x' is of MLflow type ['double']"),
    ('[{"type": {"t": 1}, "name": "x"}]', "of MLflow type {'t': 1}"),
    ('[{"type": "tensor", "tensor-spec": {"dtype": ["float64"], "shape": [-1]}}]',
     "tensor dtype ['float64']"),
    ('[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [true, 2]}}]',
     "tensor shape [True, 2] is not a list of sizes"),
])
def test_signature_columns_of_the_wrong_types_are_refused(inputs: str, words: str) -> None:
    """Before: a TypeError traceback (an unhashable type looked up in a dict), or a shape
    of True."""
    from baton.importers.schema import records_fields, tensor_input

    cols = json.loads(inputs)
    with pytest.raises(BundleError) as info:
        tensor_input(cols) if cols[0]["type"] == "tensor" else records_fields(cols, None)
    assert info.value.code == "MLFLOW_UNSUPPORTED" and words in info.value.message
    assert info.value.details["field"] == "signature.inputs[0]"


def test_signature_outputs_of_the_wrong_types_are_read_from_the_model_instead() -> None:
    """Before: AttributeError / TypeError tracebacks; an output spec that cannot be read
    leaves the outputs to what the model returns, as for a signature without outputs."""
    from baton.importers.schema import output_fields

    assert output_fields([{"type": "tensor", "tensor-spec": ["float64"]}]) == []
    assert output_fields([{"type": "tensor", "tensor-spec": {"dtype": "float64",
                                                             "shape": 3}}]) == []


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"x": [1.0, Infinity]}', "Infinity is not a number a JSON sample can hold"),
    ('{"x": [1.0, -Infinity]}', "-Infinity is not a number"),
    ('{"x": [1.0, 1e999]}', "1e999 is out of a float's range"),
    ('{"columns": [["x"]], "data": [[1.0]]}', "'columns' must be distinct names"),
    ('{"columns": ["x", "x"], "data": [[1.0, 2.0]]}', "'columns' must be distinct names"),
    ('{"columns": [1], "data": [[1.0]]}', "'columns' must be distinct names"),
    (b"\xff\xfe{}", "cannot be read"),
])
def test_a_malformed_input_example_is_refused(tmp_path: Path, text: str | bytes,
                                              words: str) -> None:
    """Before: a RecursionError or TypeError traceback; Infinity read as a float (the
    worker's request carried it as null, and samples/input.json could not be written); a
    repeated column kept its last value only, silently."""
    src = model_dir(tmp_path)
    if isinstance(text, bytes):
        (src / "input_example.json").write_bytes(text)
    else:
        (src / "input_example.json").write_text(text)
    err = refused(src, "MLFLOW_INVALID", "input_example.json", words)
    assert err.details["file"] == "input_example.json"


def _import(src: Path, output: Path, tmp_path: Path) -> BundleError:
    """import_mlflow's refusal; the model names Python 3.99, so an import that got past
    the checks of --output would stop at PYTHON_UNAVAILABLE, before any lock or build."""
    from baton.importers.mlflow import import_mlflow
    from baton.settings import Settings

    with pytest.raises(BundleError) as info:
        import_mlflow(src, output, Settings(home=tmp_path / "home"))
    return info.value


@pytest.mark.parametrize("where", ["model", "model/bundle", "model/sub/bundle"])
def test_an_output_inside_the_model_directory_is_refused(tmp_path: Path, where: str) -> None:
    """Before: the temporary bundle folder was made beside --output, inside the model
    directory, and a python_function model's copy of that directory copied it into itself
    (or, for --output equal to DIR, TARGET_EXISTS said only that it is not empty)."""
    src = model_dir(tmp_path, MLMODEL.replace("3.11.7", "3.99"))
    err = _import(src, tmp_path / where, tmp_path)
    assert err.code == "TARGET_INSIDE_MODEL" and "inside the model directory" in err.message
    assert sorted(p.name for p in src.iterdir()) == ["MLmodel", "model.pkl",
                                                     "requirements.txt"]


@pytest.mark.parametrize("kind", ["to an empty folder", "dangling"])
def test_an_output_that_is_a_symbolic_link_is_refused(tmp_path: Path, kind: str) -> None:
    """Before: accepted (exists() follows the link), and after the whole build the
    bundle's move failed with a NotADirectoryError traceback."""
    src = model_dir(tmp_path, MLMODEL.replace("3.11.7", "3.99"))
    elsewhere = tmp_path / "elsewhere"
    if kind == "to an empty folder":
        elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "out")
    err = _import(src, tmp_path / "out", tmp_path)
    assert err.code == "TARGET_EXISTS" and "is a symbolic link" in err.message


def test_an_output_that_is_a_file_and_a_source_that_is_not_a_folder(tmp_path: Path) -> None:
    src = model_dir(tmp_path, MLMODEL.replace("3.11.7", "3.99"))
    (tmp_path / "file").write_text("mine")
    err = _import(src, tmp_path / "file", tmp_path)
    assert err.code == "TARGET_EXISTS" and (tmp_path / "file").read_text() == "mine"
    for missing in (src / "MLmodel", tmp_path / "nowhere"):
        err = _import(missing, tmp_path / "b", tmp_path)
        assert err.code == "MLFLOW_NOT_FOUND" and "is not a directory" in err.message
    assert _import(src, tmp_path / "b", tmp_path).code == "PYTHON_UNAVAILABLE"


@pytest.mark.parametrize("line", [
    "--index-url http://127.0.0.1:9/simple", "--extra-index-url http://127.0.0.1:9/simple",
    "--trusted-host evil.example", "-i http://127.0.0.1:9/simple", "-r /etc/passwd",
    "-c other.txt", "-e git+https://evil.example/x.git#egg=x", "--find-links /tmp",
    "x @ https://evil.example/x-1.0-py3-none-any.whl", "./local/pkg", "/abs/pkg.whl",
    "file:///etc/passwd", "x==1.0 --hash=sha256:00", "x==1.0\t--index-url http://h",
    "git+https://evil.example/x.git",
])
@pytest.mark.parametrize("file", ["requirements.txt", "conda.yaml"])
def test_requirement_lines_that_are_options_urls_or_paths_are_refused(
        tmp_path: Path, line: str, file: str) -> None:
    """Nothing but name==version reaches uv pip compile: an option line would send the
    lock to another index or make it read another file."""
    src = model_dir(tmp_path)
    if file == "conda.yaml":
        (src / "requirements.txt").unlink()
        (src / file).write_text(f"dependencies:\n- pip:\n  - scikit-learn==1.9.1\n"
                                f"  - {json.dumps(line)}\n")
    else:
        (src / file).write_text(f"scikit-learn==1.9.1\n{line}\n")
    err = refused(src, "MLFLOW_UNPINNED", file, repr(line))
    assert err.details == {"file": file, "line": line}


def test_a_python_version_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """Before: '3.11.7\\n' passed the check ($ matches before a final newline) and went to
    uv as --python-version."""
    src = model_dir(tmp_path, MLMODEL.replace("python_version: 3.11.7",
                                              'python_version: "3.11.7\\n"'))
    refused(src, "MLFLOW_INVALID", "python_version must be a Python version")


@pytest.mark.parametrize("text", ['{"columns": ["x"], "data": []}', '{"x": []}',
                                  '{"dataframe_split": {"columns": ["x"], "data": []}}',
                                  '{"inputs": []}'])
def test_an_input_example_of_no_rows_is_refused(tmp_path: Path, text: str) -> None:
    """Before: read as an example of zero rows, the samples of the bundle to be."""
    src = model_dir(tmp_path)
    (src / "input_example.json").write_text(text)
    refused(src, "MLFLOW_INVALID", "input_example.json: the input example has no rows")
