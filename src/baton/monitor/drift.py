"""Input drift: recent production inputs against the training sample's reference profile.

The SDK stores a profile when it packages a model (``monitoring/reference.json``): for a
numeric feature, decile bin edges with the training share in each bin and 101 quantiles;
for a categorical one, the share of each category. The engine keeps the latest inputs in a
fixed-size window per feature and computes, on demand, the population stability index
(PSI, binned by the reference's edges or categories) and, for numeric features, the
Kolmogorov-Smirnov distance measured at the reference's percentiles (``ks_at_percentiles``).

That KS figure is not the two-sample statistic against the training sample (the profile
does not keep the sample): it is the largest gap between the window's empirical
distribution and the reference's at the reference's 101 quantiles, so it reads at most
0.01 (one percentile) plus 1/(training rows) away from the two-sample statistic. The key
``ks`` carries the same value, kept for readers of the old name (deprecated).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from baton.batch import Batch
from baton.contract.spec import FieldSpec

if TYPE_CHECKING:
    import pandas as pd

EPS = 1e-4
MIN_ROWS = 100


def reference_profile(frame: pd.DataFrame, fields: Iterable[FieldSpec]) -> dict[str, Any]:
    """The reference profile of a training DataFrame (called by the SDK)."""
    features: dict[str, Any] = {}
    for spec in fields:
        col = frame[spec.name]
        missing = float(col.isna().mean()) if len(col) else 0.0
        present = col.dropna()
        if spec.type in ("float", "integer") and spec.categories is None:
            values = present.to_numpy(dtype=np.float64)
            if values.size == 0:
                continue
            edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
            counts = np.bincount(np.searchsorted(edges, values, side="right"),
                                 minlength=edges.size + 1)
            features[spec.name] = {
                "kind": "numeric", "missing": missing, "edges": edges.tolist(),
                "proportions": (counts / values.size).tolist(),
                "quantiles": np.quantile(values, np.linspace(0, 1, 101)).tolist()}
        else:
            shares = present.astype(str).value_counts(normalize=True)
            features[spec.name] = {"kind": "categorical", "missing": missing,
                                   "proportions": {str(k): float(v) for k, v in
                                                   shares.items()}}
    return {"rows": int(len(frame)), "features": features}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


class _Ring:
    """The latest ``size`` values of one feature."""

    def __init__(self, size: int, numeric: bool) -> None:
        self.numeric = numeric
        self.values: Any = np.full(size, np.nan) if numeric else [None] * size
        self.size, self.pos, self.filled = size, 0, 0

    def extend(self, col: Any) -> None:
        n = len(col)
        if n >= self.size:
            col, n = col[-self.size:], self.size
        end = self.pos + n
        if self.numeric:
            arr = np.asarray(col, dtype=np.float64)
            if end <= self.size:
                self.values[self.pos:end] = arr
            else:
                cut = self.size - self.pos
                self.values[self.pos:] = arr[:cut]
                self.values[:end - self.size] = arr[cut:]
        else:
            for v in col:
                self.values[self.pos] = v
                self.pos = (self.pos + 1) % self.size
            self.filled = min(self.size, self.filled + n)
            return
        self.pos = end % self.size
        self.filled = min(self.size, self.filled + n)

    def current(self) -> Any:
        if self.filled < self.size:
            return self.values[:self.filled] if self.numeric else self.values[:self.filled]
        return self.values


class DriftMonitor:
    def __init__(self, reference: dict[str, Any], threshold: float = 0.2,
                 window: int = 5000) -> None:
        self.reference = reference["features"]
        self.threshold = threshold
        self.rings = {name: _Ring(window, f["kind"] == "numeric")
                      for name, f in self.reference.items()}
        self.drifting: set[str] = set()
        self._cache: tuple[float, dict[str, Any]] | None = None

    def observe(self, batch: Batch) -> None:
        for name, ring in self.rings.items():
            col = batch.columns.get(name)
            if col is not None:
                ring.extend(col)

    def compute(self, max_age: float = 1.0) -> dict[str, Any]:
        """Per-feature PSI (and the KS distance at the reference's percentiles for
        numbers), cached for ``max_age`` seconds."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < max_age:
            return self._cache[1]
        out: dict[str, Any] = {}
        for name, ring in self.rings.items():
            ref = self.reference[name]
            values = ring.current()
            if ring.filled < MIN_ROWS:
                continue
            out[name] = (_numeric(ref, values) if ring.numeric else _categorical(ref, values))
            out[name]["rows"] = ring.filled
            out[name]["drifting"] = out[name]["psi"] > self.threshold
        self._cache = (now, out)
        return out

    def newly_drifting(self, result: dict[str, Any]) -> list[str]:
        now = {k for k, v in result.items() if v["drifting"]}
        new = sorted(now - self.drifting)
        self.drifting = now
        return new


def _numeric(ref: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    edges = np.asarray(ref["edges"])
    if present.size == 0:
        return {"psi": math.inf, "ks_at_percentiles": 1.0, "ks": 1.0, "missing": 1.0}
    counts = np.bincount(np.searchsorted(edges, present, side="right"),
                         minlength=edges.size + 1) / present.size
    quantiles = np.asarray(ref["quantiles"])
    ecdf = np.searchsorted(np.sort(present), quantiles, side="right") / present.size
    ks = float(np.max(np.abs(ecdf - np.linspace(0, 1, quantiles.size))))
    return {"psi": psi(np.asarray(ref["proportions"]), counts), "ks_at_percentiles": ks,
            "ks": ks,
            "missing": float(1 - present.size / values.size)}


def _categorical(ref: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    present = [str(v) for v in values if v is not None]
    cats = list(ref["proportions"])
    expected = np.array([ref["proportions"][c] for c in cats] + [0.0])
    counts = dict.fromkeys(cats, 0)
    other = 0
    for v in present:
        if v in counts:
            counts[v] += 1
        else:
            other += 1
    total = max(len(present), 1)
    actual = np.array([counts[c] / total for c in cats] + [other / total])
    return {"psi": psi(expected, actual), "missing": 1 - len(present) / max(len(values), 1),
            "unseen_share": other / total}
