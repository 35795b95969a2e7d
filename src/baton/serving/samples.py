"""A bundle's samples as requests: for `baton check`, and to warm up a new version."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from baton.bundle.loader import Bundle
from baton.contract.spec import Contract
from baton.errors import BatonError

if TYPE_CHECKING:
    from baton.serving.model import ModelService


def load_samples(bundle: Bundle) -> tuple[Any, Any, float]:
    """The bundle's sample inputs, expected outputs and tolerance (``None`` when absent)."""
    s = bundle.manifest.samples
    if s is None:
        return None, None, 0.0
    try:
        inputs = json.loads((bundle.path / s.input).read_text())
        expected = json.loads((bundle.path / s.expected).read_text())
    except (OSError, ValueError) as exc:
        raise BatonError(f"cannot read samples: {exc}", code="INVALID_SAMPLES") from None
    return inputs, expected, s.tolerance


def request_body(contract: Contract, inputs: Any, repeat_to: int | None = None) -> bytes:
    """A request body for the bundle's contract kind, optionally grown to ``repeat_to`` rows."""
    if contract.kind == "records":
        rows = inputs if repeat_to is None else (inputs * math.ceil(repeat_to / len(inputs)))[
            :repeat_to]
        return orjson.dumps(rows)
    tensors = []
    for spec in contract.inputs:
        arr = np.asarray(inputs[spec.name], dtype=spec.dtype)
        if repeat_to is not None:
            reps = math.ceil(repeat_to / arr.shape[0])
            arr = np.concatenate([arr] * reps)[:repeat_to]
        tensors.append({"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape),
                        "data": arr.reshape(-1).tolist()})
    return orjson.dumps({"inputs": tensors})


async def call(svc: ModelService, body: bytes) -> Any:
    """Score a request body through the full serving path; outputs as plain data."""
    if svc.contract.kind == "records":
        return orjson.loads(await svc.predict_records(body))["predictions"]
    out = orjson.loads(await svc.infer(body))["outputs"]
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]).tolist() for o in out}
