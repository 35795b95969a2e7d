"""The sample-derived calls of ``baton check``: rows alone, a null record, comparisons.

Samples are plain JSON: a list of records (records contracts) or a dict of tensors whose
first axis is the row (tensor contracts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from baton.contract.spec import Contract
from baton.errors import SampleMismatch


def sample_rows(inputs: Any) -> int:
    if isinstance(inputs, list):
        return len(inputs)
    return min((len(v) for v in inputs.values()), default=0)


def one_row(inputs: Any, i: int) -> Any:
    """Row ``i`` of the samples, as samples of one row."""
    if isinstance(inputs, list):
        return [inputs[i]]
    return {k: v[i:i + 1] for k, v in inputs.items()}


def null_record(contract: Contract, inputs: Any) -> dict[str, Any] | None:
    """The first sample record with every nullable input field null; None when there is no
    nullable field (tensor contracts have none)."""
    if contract.kind != "records" or not inputs:
        return None
    nullable = [f.name for f in contract.inputs if f.nullable]
    if not nullable:
        return None
    return {**inputs[0], **dict.fromkeys(nullable)}


def with_record(inputs: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    return [*inputs, record]


def batch_dependent(batch_outputs: Any, alone: Any, i: int, tol: float, what: str,
                    where: str) -> None:
    """Raise unless the answer to row ``i`` of a batch equals the answer to it alone."""
    differences = compare(one_row(batch_outputs, i), alone, tol)
    if differences:
        d = differences[0]
        raise SampleMismatch(
            f"{what} scores differently alone than {where}: field {d['field']!r} is "
            f"{d['expected']!r} {where} but {d['got']!r} alone (tolerance {tol:g})",
            code="BATCH_DEPENDENT_ANSWER",
            details={"record": i, "field": d["field"], "in_batch": d["expected"],
                     "alone": d["got"]})


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return bool(a == b)


def compare(expected: Any, actual: Any, tol: float) -> list[dict[str, Any]]:
    """Differences between expected and actual outputs, as record/field/expected/got."""
    out: list[dict[str, Any]] = []
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [{"record": None, "field": None, "expected": f"{len(expected)} records",
                     "got": f"{len(actual)} records"}]
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            for key in e.keys() | a.keys():
                if not _close(e.get(key), a.get(key), tol):
                    out.append({"record": i, "field": key, "expected": e.get(key),
                                "got": a.get(key)})
        return out
    for name, exp in expected.items():
        e, a = np.asarray(exp), np.asarray(actual.get(name))
        if e.shape != a.shape:
            out.append({"record": None, "field": name, "expected": f"shape {list(e.shape)}",
                        "got": f"shape {list(a.shape)}"})
            continue
        bad = ~np.isclose(e, a, rtol=tol, atol=tol) if e.dtype.kind in "fiu" else e != a
        for idx in np.argwhere(bad)[:20]:
            out.append({"record": int(idx[0]), "field": name, "expected": e[tuple(idx)].item(),
                        "got": a[tuple(idx)].item()})
    return out


def largest_difference(expected: Any, actual: Any) -> float | None:
    """The largest absolute difference between an expected and an actual number, over
    every output (None when no output is numeric): how close a converted model lands."""
    diffs: list[float] = []
    if isinstance(expected, list):
        for e, a in zip(expected, actual, strict=False):
            diffs += [abs(float(e[k]) - float(a[k])) for k in e
                      if _numeric(e.get(k)) and _numeric(a.get(k))]
    else:
        for name, exp in expected.items():
            e, a = np.asarray(exp), np.asarray(actual.get(name))
            if e.shape == a.shape and e.size and e.dtype.kind in "fiu" \
                    and a.dtype.kind in "fiu":
                diffs.append(float(np.nanmax(np.abs(e.astype(float) - a.astype(float)))))
    return max(diffs, default=None)


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
