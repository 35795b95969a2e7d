"""Read an MLflow model directory: ``MLmodel``, its signature, the input example, the
requirements and the Python version, each refusal naming the file and the field.

Nothing here imports MLflow: the files are YAML (read by PyYAML's safe loader, with every
number that is not an integer kept as text: ``python_version: 3.10`` is "3.10", not 3.1) and
JSON.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from baton.errors import BundleError
from baton.importers.guard import (
    MAX_EXAMPLE,
    check_paths,
    check_tree,
    load_json,
    read_text,
    short,
)

SUPPORTED_FLAVORS = ("sklearn", "python_function")
#: The sklearn flavor's formats that Baton's ``builtin:sklearn`` runner reads (a pickle).
PICKLED = ("pickle", "cloudpickle")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._ -]*\])?\s*==\s*"
                  r"([A-Za-z0-9.+!_-]+)\s*(;.*)?$")
_VERSION = re.compile(r"[A-Za-z0-9.+!_-]{1,64}")
_SIGNATURE_HOWTO = ("save the model with a signature: signature=mlflow.models.infer_signature("
                    "X, model.predict(X)) in mlflow.<flavor>.save_model or log_model")


@dataclass(frozen=True)
class Example:
    """The input example: ``records`` (one dict per row) or a ``tensor`` (nested lists)."""

    file: str
    records: list[dict[str, Any]] | None = None
    tensor: Any = None


@dataclass
class MLflowModel:
    """What an MLflow model directory says, read and checked."""

    path: Path
    #: The flavor the bundle is made from: ``sklearn`` or ``python_function``.
    flavor: str
    #: That flavor's section of ``MLmodel``.
    conf: dict[str, Any]
    flavors: tuple[str, ...]
    #: The signature's inputs and outputs (MLflow's JSON), ``None`` when absent.
    inputs: list[dict[str, Any]] | None
    outputs: list[dict[str, Any]] | None
    example: Example | None
    #: Top-level requirements, each ``name==version`` (markers kept).
    requirements: list[str]
    requirements_file: str
    #: The Python version MLflow recorded (``3.11.7``) and where it was read.
    python: str
    python_from: str
    mlflow_version: str | None
    #: What the reading decided that the import's report must say.
    notes: list[str] = field(default_factory=list)

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


def read_model(path: Path) -> MLflowModel:
    """The MLflow model in ``path``; a :class:`BundleError` names what is missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory: give the folder MLflow saved the model "
                          "in (the one holding MLmodel)", code="MLFLOW_NOT_FOUND")
    check_tree(path)
    mlmodel = _yaml(path, "MLmodel", required=True)
    if not isinstance(mlmodel, dict):
        raise _bad(path, "MLmodel", "the file", "a YAML mapping")
    check_paths(path, mlmodel)
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise _bad(path, "MLmodel", "flavors", "a mapping of at least one flavor")
    if not all(isinstance(f, str) for f in flavors):
        raise _bad(path, "MLmodel", "flavors", "a mapping of flavor names (text)",
                   [f for f in flavors if not isinstance(f, str)])
    notes: list[str] = []
    flavor = _flavor(path, flavors, notes)
    conf = flavors[flavor] if isinstance(flavors[flavor], dict) else {}
    inputs, outputs = _signature(path, mlmodel.get("signature"))
    example = read_example(path, mlmodel.get("saved_input_example_info"))
    if inputs is None and example is None:
        raise BundleError(f"{path / 'MLmodel'} has no signature and the folder no input "
                          f"example: Baton cannot know the model's inputs; {_SIGNATURE_HOWTO}",
                          code="MLFLOW_NO_SIGNATURE", details={"file": "MLmodel",
                                                               "field": "signature"})
    reqs, req_file = _requirements(path)
    python, python_from = _python(path, flavors)
    version = mlmodel.get("mlflow_version")
    if version is not None and not (isinstance(version, str) and _VERSION.fullmatch(version)):
        raise _bad(path, "MLmodel", "mlflow_version", "a version such as 3.17.2 (it is "
                   "pinned in the lock as mlflow-skinny==<version>)", version)
    return MLflowModel(path, flavor, conf, tuple(flavors), inputs, outputs, example, reqs,
                       req_file, python, python_from,
                       version, notes)


def _bad(path: Path, file: str, where: str, expected: str, got: Any = None,
         code: str = "MLFLOW_INVALID") -> BundleError:
    tail = f", got {short(got)}" if got is not None else ""
    return BundleError(f"{path / file}: {where} must be {expected}{tail}", code=code,
                       details={"file": file, "field": where})


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, no Python objects), without floats: a version
    written bare (``3.10``) stays the text it is."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _yaml(path: Path, name: str, *, required: bool = False) -> Any:
    file = path / name
    if not file.is_file():
        if required:
            raise BundleError(f"no {name} in {path}: not an MLflow model directory (MLflow "
                              f"writes MLmodel beside the model's files)",
                              code="MLFLOW_NOT_FOUND", details={"file": name})
        return None
    text = read_text(file, name)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise BundleError(f"{file} cannot be read: {exc}", code="MLFLOW_INVALID",
                          details={"file": name}) from None
    except RecursionError:
        raise BundleError(f"{file} cannot be read: nested too deeply", code="MLFLOW_INVALID",
                          details={"file": name}) from None


def _flavor(path: Path, flavors: dict[str, Any], notes: list[str]) -> str:
    sk = flavors.get("sklearn")
    if isinstance(sk, dict):
        fmt = sk.get("serialization_format") or "cloudpickle"
        if fmt in PICKLED and isinstance(sk.get("pickled_model"), str):
            return "sklearn"
        if "python_function" in flavors:
            notes.append(f"flavors.sklearn.serialization_format is {short(fmt)}: Baton's "
                         "builtin:sklearn runner reads pickles only, so the model is served "
                         "through its python_function flavor (MLflow's own loader, with "
                         "mlflow in the environment)")
            return "python_function"
        raise _bad(path, "MLmodel", "flavors.sklearn.serialization_format",
                   " or ".join(PICKLED) + " (with pickled_model)", fmt, "MLFLOW_UNSUPPORTED")
    if isinstance(flavors.get("python_function"), dict):
        others = [f for f in flavors if f != "python_function"]
        if others:
            notes.append(f"flavor {', '.join(others)}: served through its python_function "
                         "flavor (MLflow's own loader, with mlflow in the environment)")
        return "python_function"
    raise BundleError(
        f"{path / 'MLmodel'}: flavors {', '.join(flavors)} cannot be imported: baton import "
        f"mlflow supports the flavors {' and '.join(SUPPORTED_FLAVORS)} (a model MLflow can "
        "load with mlflow.pyfunc.load_model has python_function)",
        code="MLFLOW_UNSUPPORTED", details={"file": "MLmodel", "field": "flavors",
                                            "flavors": list(flavors),
                                            "supported": list(SUPPORTED_FLAVORS)})


def _signature(path: Path, sig: Any) -> tuple[list[dict[str, Any]] | None,
                                              list[dict[str, Any]] | None]:
    if sig is None:
        return None, None
    if not isinstance(sig, dict):
        raise _bad(path, "MLmodel", "signature", "a mapping with inputs and outputs")
    sides: list[list[dict[str, Any]] | None] = []
    for side in ("inputs", "outputs"):
        text = sig.get(side)
        if text is None:
            sides.append(None)
            continue
        try:
            value = load_json(text) if isinstance(text, str) else None
        except ValueError as exc:
            raise _bad(path, "MLmodel", f"signature.{side}", "MLflow's schema JSON",
                       str(exc)) from None
        if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
            raise _bad(path, "MLmodel", f"signature.{side}", "a JSON list of columns or "
                       "tensors", text)
        sides.append(value or None)
    if sides[0] is None:
        raise _bad(path, "MLmodel", "signature.inputs", "present in a signature",
                   code="MLFLOW_NO_SIGNATURE")
    return sides[0], sides[1]


def read_example(path: Path, info: Any) -> Example | None:
    """The input example, from the file ``saved_input_example_info`` names, else
    ``input_example.json``, else ``serving_input_example.json``."""
    names = []
    if isinstance(info, dict) and isinstance(info.get("artifact_path"), str):
        names.append(info["artifact_path"])
    names += ["input_example.json", "serving_input_example.json"]
    for name in dict.fromkeys(names):
        file = path / name
        if not file.is_file():
            continue
        if file.suffix != ".json":
            raise BundleError(f"{file}: only JSON input examples are read (this one is "
                              f"{file.suffix}); save the example as a DataFrame or a dict",
                              code="MLFLOW_UNSUPPORTED", details={"file": name})
        try:
            data = load_json(read_text(file, name, MAX_EXAMPLE))
            example = _example(data, name, path)
            if example.records == [] or example.tensor == []:
                raise BundleError(f"{file}: the input example has no rows: save it with at "
                                  "least one, or without an example", code="MLFLOW_INVALID",
                                  details={"file": name})
            return example
        except ValueError as exc:
            raise BundleError(f"{file} is not JSON: {exc}", code="MLFLOW_INVALID",
                              details={"file": name}) from None
        except RecursionError:
            raise BundleError(f"{file}: nested too deeply", code="MLFLOW_INVALID",
                              details={"file": name}) from None
    return None


def _example(data: Any, name: str, path: Path) -> Example:
    if isinstance(data, dict) and len(data) == 1:
        (key, inner), = data.items()
        if key in ("dataframe_split", "dataframe_records"):
            return _example(inner, name, path)
        if key in ("inputs", "instances"):
            if isinstance(inner, list) and inner and all(isinstance(r, dict) for r in inner):
                return Example(name, records=[_clean(r) for r in inner])
            return Example(name, tensor=_nulls(inner))
    if isinstance(data, dict) and isinstance(data.get("columns"), list) \
            and isinstance(data.get("data"), list):
        cols = data["columns"]
        rows = data["data"]
        if not all(isinstance(c, str) for c in cols) or len(set(cols)) != len(cols):
            raise BundleError(f"{path / name}: 'columns' must be distinct names (text), got "
                              f"{short(cols)}", code="MLFLOW_INVALID",
                              details={"file": name, "field": "columns"})
        if not all(isinstance(r, list) and len(r) == len(cols) for r in rows):
            raise BundleError(f"{path / name}: every row of 'data' must have one value per "
                              "column", code="MLFLOW_INVALID", details={"file": name})
        return Example(name, records=[_clean(dict(zip(cols, r, strict=True))) for r in rows])
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return Example(name, records=[_clean(r) for r in data])
    if isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, list) for v in values):
            if len({len(v) for v in values}) != 1:
                raise BundleError(f"{path / name}: the columns of the example differ in "
                                  "length", code="MLFLOW_INVALID", details={"file": name})
            return Example(name, records=[_clean(dict(zip(data, row, strict=True)))
                                          for row in zip(*values, strict=True)])
        return Example(name, records=[_clean(data)])
    if isinstance(data, list) and data:
        return Example(name, tensor=_nulls(data))
    raise BundleError(f"{path / name}: an input example must be a DataFrame (columns and "
                      "data, or records), a dict, or a list of rows", code="MLFLOW_INVALID",
                      details={"file": name})


def _nulls(value: Any) -> Any:
    """NaN (which MLflow's JSON writes bare) as ``None``, the JSON ``null`` of samples."""
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _clean(record: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): _nulls(v) for k, v in record.items()}


def _requirements(path: Path) -> tuple[list[str], str]:
    """requirements.txt's lines (else conda.yaml's pip list), each an exact pin."""
    file = path / "requirements.txt"
    if file.is_file():
        lines = read_text(file, "requirements.txt").splitlines()
        source = "requirements.txt"
    else:
        conda = _yaml(path, "conda.yaml")
        pip = _conda_pip(conda, path)
        if pip is None:
            raise BundleError(f"no requirements.txt (nor a pip list in conda.yaml) in {path}: "
                              "MLflow writes one beside MLmodel; the model's libraries and "
                              "their versions are needed", code="MLFLOW_NO_REQUIREMENTS",
                              details={"file": "requirements.txt"})
        lines, source = pip, "conda.yaml"
    out = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise BundleError(f"{path / source}: {line!r}: options and included files are not "
                              "read; list every requirement as name==version",
                              code="MLFLOW_UNPINNED", details={"file": source, "line": line})
        m = _PIN.match(line)
        if not m:
            raise BundleError(
                f"{path / source}: {line!r} is not pinned to one version (name==version): "
                "the lock must start from the versions the model was saved with; pin it "
                "there, to the version installed where the model was trained",
                code="MLFLOW_UNPINNED", details={"file": source, "line": line})
        out.append(line)
    return out, source


def _conda_pip(conda: Any, path: Path) -> list[str] | None:
    if not isinstance(conda, dict) or not isinstance(conda.get("dependencies"), list):
        return None
    for dep in conda["dependencies"]:
        if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            odd = [p for p in dep["pip"] if not isinstance(p, str)]
            if odd:
                raise BundleError(f"{path / 'conda.yaml'}: dependencies.pip must list "
                                  f"requirements as text (name==version), got "
                                  f"{short(odd[0])}",
                                  code="MLFLOW_INVALID", details={"file": "conda.yaml",
                                                                  "field": "dependencies.pip"})
            return list(dep["pip"])
    return None


def _python(path: Path, flavors: dict[str, Any]) -> tuple[str, str]:
    env = _yaml(path, "python_env.yaml")
    candidates = [(env.get("python") if isinstance(env, dict) else None,
                   "python_env.yaml: python")]
    pyfunc = flavors.get("python_function")
    candidates.append((pyfunc.get("python_version") if isinstance(pyfunc, dict) else None,
                       "MLmodel: flavors.python_function.python_version"))
    conda = _yaml(path, "conda.yaml")
    deps = conda.get("dependencies") if isinstance(conda, dict) else None
    for dep in deps if isinstance(deps, list) else []:
        if isinstance(dep, str) and re.match(r"^python\s*[=<>]", dep):
            candidates.append((re.sub(r"^python\s*=*\s*", "", dep), "conda.yaml: python"))
    for value, where in candidates:
        if value is None:
            continue
        if not isinstance(value, str) or not re.fullmatch(r"3\.\d{1,2}(\.\d+)?", value):
            raise BundleError(f"{path / where.split(':')[0]}: {where.split(': ')[1]} must be "
                              f"a Python version such as 3.11.7, got {short(value)}",
                              code="MLFLOW_INVALID", details={"file": where.split(":")[0]})
        return value, where
    raise BundleError(f"{path}: no Python version recorded (python_env.yaml: python, "
                      "MLmodel: flavors.python_function.python_version): the environment "
                      "must be built for the version the model was saved with",
                      code="MLFLOW_INVALID", details={"file": "python_env.yaml",
                                                      "field": "python"})
