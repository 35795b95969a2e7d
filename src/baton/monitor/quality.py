"""Model quality from predictions joined with the true values that arrived later.

Defaults by the kind of the model's prediction field: classification (a string, integer
category or boolean prediction) gets accuracy; regression (a float prediction) gets mean
absolute error and root mean squared error. Computed over the latest labelled window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from baton.contract.spec import Contract, FieldSpec
from baton.errors import BundleError, ContractViolation, RequestError

#: The built-in metrics that apply to a prediction field, by its type.
APPLICABLE = {"float": ("mae", "rmse"), "integer": ("accuracy",), "string": ("accuracy",),
              "boolean": ("accuracy",)}


def prediction_field(contract: Contract) -> FieldSpec | None:
    """The output a label is compared with: ``prediction``, else the first output field."""
    if contract.kind != "records":
        return None
    by_name = {s.name: s for s in contract.outputs}
    spec = by_name.get("prediction", contract.outputs[0])
    return spec if isinstance(spec, FieldSpec) else None


def check_metrics(contract: Contract, declared: tuple[str, ...]) -> None:
    """Refuse a declared built-in metric the model's prediction field cannot yield (``mae``
    on a classifier, ``accuracy`` on a regressor, any of them on a tensor model)."""
    spec = prediction_field(contract)
    kind = "tensor" if contract.kind != "records" else spec.type if spec else "none"
    applicable = APPLICABLE.get(kind, ())
    for metric in declared:
        if ":" not in metric and metric not in applicable:
            field = spec.name if spec else "outputs"
            fits = f"it takes {', '.join(applicable)}" if applicable else "no built-in applies"
            raise BundleError(
                f"monitoring.metrics declares {metric!r}, which cannot apply to the model's "
                f"{kind} prediction field {field!r} ({fits})", code="METRIC_NOT_APPLICABLE",
                details={"metric": metric, "field": field, "kind": kind,
                         "applicable": list(applicable)})


def check_label(spec: FieldSpec, index: int, label: Any) -> None:
    ok = {"string": lambda v: isinstance(v, str),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool)
          and math.isfinite(v),
          "boolean": lambda v: isinstance(v, bool)}[spec.type](label)
    if not ok:
        raise ContractViolation(
            f"feedback {index}: label {label!r} is not a {spec.type} like the model's "
            f"{spec.name!r} output",
            violations=[{"record": index, "field": "label", "expected": spec.type,
                         "got": label, "message": "wrong label type"}])


def parse_feedback(body: Any, spec: FieldSpec) -> list[tuple[str, Any]]:
    if not isinstance(body, list) or not body:
        raise RequestError("feedback must be a non-empty JSON list of {\"id\", \"label\"}",
                           code="BAD_SHAPE")
    out = []
    for i, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) \
                or "label" not in item:
            raise RequestError(f"feedback {i} must be an object with a string 'id' and a "
                               "'label'", code="BAD_SHAPE", details={"record": i})
        check_label(spec, i, item["label"])
        out.append((item["id"], item["label"]))
    return out


def compute(spec: FieldSpec, pairs: list[tuple[dict[str, Any], Any]]) -> dict[str, float]:
    preds = [(o.get(spec.name), label) for o, label in pairs]
    if not preds:
        return {}
    if spec.type == "float":
        errors = [float(p) - float(t) for p, t in preds if p is not None]
        if not errors:
            return {}
        return {"mae": sum(abs(e) for e in errors) / len(errors),
                "rmse": math.sqrt(sum(e * e for e in errors) / len(errors))}
    return {"accuracy": sum(1 for p, t in preds if p == t) / len(preds)}


class QualityTracker:
    """The latest quality figures of one model version, and their history.

    ``declared`` are the bundle's metrics: built-in names are computed here, and
    ``module:function`` ones by the caller in the model's own worker (see ``custom``).
    """

    def __init__(self, spec: FieldSpec, window: int = 1000, history: int = 500,
                 declared: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.window = window
        self.declared = declared
        self.custom = [m for m in declared if ":" in m]
        self.current: dict[str, float] = {}
        self.labelled = 0
        self.failures: dict[str, int] = {}
        self.last_errors: dict[str, str] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=history)

    def builtin(self, pairs: list[tuple[dict[str, Any], Any]]) -> dict[str, float]:
        values = compute(self.spec, pairs)
        if self.declared:
            wanted = set(self.declared)
            values = {k: v for k, v in values.items() if k in wanted}
        return values

    def failed(self, errors: dict[str, str]) -> None:
        for name, message in errors.items():
            self.failures[name] = self.failures.get(name, 0) + 1
            self.last_errors[name] = message

    def update(self, pairs: list[tuple[dict[str, Any], Any]],
               custom: dict[str, float] | None = None) -> dict[str, float]:
        self.current = {**self.builtin(pairs), **(custom or {})}
        self.labelled = len(pairs)
        self.history.append({"time": time.time(), "labelled": len(pairs), **self.current})
        return self.current
