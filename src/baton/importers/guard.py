"""An MLflow model directory treated as hostile: it may have been downloaded, or made by
someone else. Checked before any of it is read:

- no symbolic link and no special file (a FIFO, a device, a socket) anywhere in it: MLflow
  writes neither, and a link would bring its target (``/etc/passwd``, a key in the user's
  home) into the bundle, or loop;
- every path ``MLmodel`` names is relative and stays in the directory (no ``..``, not
  absolute);
- the text files are bounded in size and in nesting, and a value quoted in an error is
  cut short (a YAML file of aliases is small as text and huge once walked).
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from baton.errors import BundleError

#: The most bytes read of MLmodel, conda.yaml, python_env.yaml and requirements.txt.
MAX_TEXT = 4 << 20
#: The most bytes read of the input example (it becomes samples/input.json).
MAX_EXAMPLE = 16 << 20
#: The fields of a flavor's section of MLmodel that name a file or folder of the model.
PATH_FIELDS = ("pickled_model", "data", "code", "model_path", "python_model",
               "model_code_path")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def short(value: Any) -> str:
    """``repr(value)`` cut short: bounded however large or aliased the value is."""
    text = _repr.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def unsafe(file: str, why: str, path: Path | str) -> BundleError:
    return BundleError(f"{path}: {why}", code="MLFLOW_UNSAFE_PATH",
                       details={"file": file})


def check_tree(root: Path) -> None:
    """Refuse a symbolic link or a special file anywhere under ``root``."""
    def fail(exc: OSError) -> None:
        raise BundleError(f"{exc.filename}: cannot be read: {exc.strerror}",
                          code="MLFLOW_INVALID", details={"file": str(exc.filename)})

    for top, dirs, files in os.walk(root, onerror=fail):
        for name in sorted(dirs + files):
            entry = Path(top) / name
            rel = entry.relative_to(root).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise unsafe(rel, f"a symbolic link (to {os.readlink(entry)}): an MLflow "
                             "model directory holds plain files only, and a link would put "
                             "its target, possibly outside the directory, in the bundle",
                             entry)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise unsafe(rel, "not a regular file (a pipe, a socket or a device): an "
                             "MLflow model directory holds plain files only", entry)


def inside(root: Path, value: Any, file: str, field: str) -> Path:
    """``root / value`` for a path that ``file`` names in ``field``: refused unless it is
    relative and stays in ``root``."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise BundleError(f"{root / file}: {field} must be a path in the model directory, "
                          f"got {short(value)}", code="MLFLOW_INVALID",
                          details={"file": file, "field": field})
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise BundleError(f"{root / file}: {field} is {short(value)}, which leads out of the "
                          "model directory: every path MLmodel names must be relative and "
                          "inside it (no '..', not absolute)", code="MLFLOW_UNSAFE_PATH",
                          details={"file": file, "field": field})
    return root / pure


def check_paths(root: Path, mlmodel: dict[str, Any]) -> None:
    """Every path MLmodel names (flavors' files, artifacts, environment files, the input
    example) stays in ``root``."""
    flavors = mlmodel.get("flavors")
    for flavor, conf in flavors.items() if isinstance(flavors, dict) else ():
        if not isinstance(conf, dict):
            continue
        where = f"flavors.{flavor}"
        for key in PATH_FIELDS:
            if isinstance(conf.get(key), str):
                inside(root, conf[key], "MLmodel", f"{where}.{key}")
        env = conf.get("env")
        envs = env.items() if isinstance(env, dict) else [("", env)]
        for key, value in envs:
            if isinstance(value, str):
                inside(root, value, "MLmodel", f"{where}.env{'.' if key else ''}{key}")
        artifacts = conf.get("artifacts")
        for name, art in artifacts.items() if isinstance(artifacts, dict) else ():
            if isinstance(art, dict) and "path" in art:
                inside(root, art["path"], "MLmodel", f"{where}.artifacts.{name}.path")
    info = mlmodel.get("saved_input_example_info")
    if isinstance(info, dict) and "artifact_path" in info:
        inside(root, info["artifact_path"], "MLmodel",
               "saved_input_example_info.artifact_path")


def read_text(file: Path, name: str, limit: int = MAX_TEXT) -> str:
    """The text of ``file``, refused when larger than ``limit`` bytes or not UTF-8."""
    with open(file, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{file} is over {limit >> 20} MiB: an MLflow model's {name} is "
                          "far smaller; it is not read", code="MLFLOW_INVALID",
                          details={"file": name, "limit_bytes": limit})
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{file} cannot be read: {exc}", code="MLFLOW_INVALID",
                          details={"file": name}) from None


def _no_infinity(constant: str) -> float:
    if constant == "NaN":
        return float("nan")  # MLflow writes a missing value as a bare NaN
    raise ValueError(f"{constant} is not a number a JSON sample can hold")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is out of a float's range")
    return value


def load_json(text: str) -> Any:
    """JSON as MLflow writes it (a bare ``NaN`` is a missing value); ``Infinity`` and
    nesting past Python's recursion limit are refused with ``ValueError``."""
    try:
        return json.loads(text, parse_constant=_no_infinity, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
