"""Run an imported model in its own environment: what kind of model it is, and what it
answers to the input example, through Baton's own worker.

The engine never imports the model's libraries (nor MLflow): a scikit-learn pickle is
opened by a short script run with the environment's interpreter, and the example is scored
by the same worker and runner that ``baton serve`` and ``baton check`` start.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from baton.batch import Batch
from baton.bundle.loader import Bundle
from baton.contract.spec import FieldSpec
from baton.env.builder import Environment
from baton.errors import BatonError, BundleError, ContractViolation
from baton.serving import v2
from baton.serving.model import ModelService
from baton.serving.samples import request_body
from baton.settings import Settings

#: Run with the model environment's Python (``-I``: nothing of Baton's on its path).
_PROBE = """
import json, pickle, sys
sys.path.insert(0, sys.argv[2])
with open(sys.argv[1], "rb") as f:
    model = pickle.load(f)
classes = getattr(model, "classes_", None)
if classes is not None:
    classes = [c.item() if hasattr(c, "item") else c for c in classes]
json.dump({"proba": callable(getattr(model, "predict_proba", None)),
           "classes": classes,
           "type": type(model).__module__ + "." + type(model).__qualname__}, sys.stdout)
"""


def probe_sklearn(env: Environment, pickle_path: Path, bundle_dir: Path) -> dict[str, Any]:
    """``{"proba": bool, "classes": [...] | None, "type": "module.Class"}`` of the pickled
    model, read by the model environment's own interpreter."""
    try:
        proc = subprocess.run([str(env.python), "-I", "-c", _PROBE, str(pickle_path.resolve()),
                               str(bundle_dir.resolve())], capture_output=True, text=True,
                              cwd=bundle_dir, stdin=subprocess.DEVNULL, timeout=300)
    except subprocess.TimeoutExpired:
        raise BundleError(f"unpickling {pickle_path.name} in the model's environment took "
                          "over 300 s", code="MLFLOW_LOAD_FAILED") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise BundleError(f"the model's pickle does not load in its own environment (the "
                          f"locked requirements): {tail}", code="MLFLOW_LOAD_FAILED",
                          details={"stderr": proc.stderr[-4000:]})
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def score_example(bundle: Bundle, env: Environment, settings: Settings,
                  inputs: Any, example_file: str) -> Batch:
    """The raw output columns of the model for ``inputs`` (the example, in the bundle's
    samples format), from one worker started as ``baton check`` starts it. The output
    contract is not applied: the outputs are what the contract is being made from."""
    return asyncio.run(_score(bundle, env, replace(settings, workers=1), inputs, example_file))


async def _score(bundle: Bundle, env: Environment, settings: Settings, inputs: Any,
                 example_file: str) -> Batch:
    svc = ModelService(bundle, env, settings)
    body = request_body(svc.contract, inputs)
    try:
        batch = (svc.records.decode(body) if svc.records is not None
                 else v2.decode_request(svc.contract, v2.parse_request(body)))
    except ContractViolation as exc:
        raise BundleError(f"{example_file}, the input example, breaks the contract made from "
                          f"the signature: {exc.message}", code="MLFLOW_EXAMPLE_INVALID",
                          details={"file": example_file, **exc.details}) from None
    try:
        await svc.pool.start()
        return await svc.pool.predict(batch)
    except BatonError as exc:
        raise BundleError(f"the model failed on {example_file} in its own environment "
                          f"[{exc.code}]: {exc.message}", code="MLFLOW_MODEL_FAILED",
                          details=exc.details) from None
    finally:
        await svc.pool.close(5.0)


def column_values(col: Any) -> list[Any]:
    """A raw output column as JSON values: NaN as ``None``."""
    values = col.tolist() if isinstance(col, np.ndarray) else list(col)
    return [_plain(v) for v in values]


def _plain(v: Any) -> Any:
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def column_field(name: str, col: Any, ftype: str | None = None,
                 nullable: bool = False) -> FieldSpec:
    """An output field for a raw column: its type read from the values unless given."""
    values = column_values(col)
    present = [v for v in values if v is not None]
    nullable = nullable or len(present) < len(values)
    if isinstance(col, np.ndarray) and col.dtype.kind in "fiub" and col.ndim == 1:
        found = {"f": "float", "i": "integer", "u": "integer", "b": "boolean"}[col.dtype.kind]
    else:
        kinds = {type(v) for v in present}
        found = ("boolean" if kinds == {bool} else "integer" if kinds == {int} else
                 "float" if kinds and kinds <= {int, float} else
                 "string" if kinds == {str} else "")
    if ftype is None or (ftype == "integer" and found == "float"):
        ftype = found or ftype  # a signature's long output that pandas made float stays float
    if not ftype:
        held = ", ".join(sorted({type(v).__name__ for v in present})) or "only nulls"
        raise BundleError(f"the model's output {name!r} holds {held}: a records output field "
                          "takes floats, integers, booleans or strings",
                          code="MLFLOW_OUTPUT_UNSUPPORTED", details={"output": name})
    return FieldSpec(name, ftype, nullable)
