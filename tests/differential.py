"""Models packaged with ``baton.package``, records generated from their contracts, and the
answer the notebook gets: what the differential tests compare Baton's answers with."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

import baton
from baton.bundle.manifest import BundleManifest
from baton.contract.spec import FieldSpec

N = 240
#: Values at the edges of each type that every model here must answer for.
FLOAT_EDGES = (0.0, -0.0, 5e-324, -1e6, 1e6, 1e-300)
INT_EDGES = (0, -1, 2**53, -(2**53))
TEXT_EDGES = ("", " ", "é", "NA", "null", "x" * 300, "\x00")


@dataclass
class Packaged:
    """A fitted model, its training sample, and the bundle ``baton.package`` wrote."""

    name: str
    model: Any
    sample: pd.DataFrame
    method: str
    path: Path

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        return BundleManifest.load(self.path).contract.inputs

    def notebook(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the model answers in the packaging environment, records read as the sample
        was: each column built with the sample's dtype. (Not ``pd.DataFrame(records)``: its
        dtypes depend on the batch, e.g. None beside text becomes NaN, alone it stays None.)"""
        frame = pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=t)
                              for c, t in self.sample.dtypes.items()})
        if self.method == "predict":
            return [{"prediction": _plain(v)} for v in self.model.predict(frame)]
        proba = self.model.predict_proba(frame)
        classes = list(self.model.classes_)
        return [{"prediction": _plain(classes[int(row.argmax())]),
                 **{f"proba_{c}": float(p) for c, p in zip(classes, row, strict=True)}}
                for row in proba]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _holes(rng: np.random.Generator, values: Any, frac: float = 0.15) -> pd.Series:
    s = pd.Series(values)
    s[rng.random(len(s)) < frac] = None
    return s


def _frame(seed: int) -> tuple[pd.DataFrame, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "island": pd.Series(rng.choice(["Biscoe", "Dream", "Torgersen"], N)),
        "sex": _holes(rng, rng.choice(["female", "male"], N)),
        "bill": _holes(rng, rng.normal(44.0, 5.0, N)),
        "flipper": _holes(rng, pd.array(rng.integers(170, 230, N), dtype="Int64")),
        "year": rng.integers(2007, 2010, N),
    })
    species = np.where(frame["flipper"].fillna(200) > 205, "Gentoo",
                       np.where(frame["island"] == "Dream", "Chinstrap", "Adelie"))
    return frame, species, rng


def one_hot() -> tuple[Any, pd.DataFrame, str]:
    """Imputers, scaling and one-hot encoding in front of a logistic regression."""
    frame, species, _ = _frame(1)
    frame = frame.drop(columns=["flipper"])
    features = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         ["bill", "year"]),
        ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                      OneHotEncoder(handle_unknown="ignore")),
         ["island", "sex"]),
    ])
    model = make_pipeline(features, LogisticRegression(max_iter=500))
    return model.fit(frame, species), frame, "predict_proba"


def native_categories() -> tuple[Any, pd.DataFrame, str]:
    """Gradient boosting that reads pandas ``category`` columns natively (with nulls)."""
    frame, species, rng = _frame(2)
    frame["island"] = pd.Categorical(frame["island"], categories=["Torgersen", "Biscoe",
                                                                  "Dream"])
    frame["sex"] = pd.Categorical(frame["sex"], categories=["male", "female"])
    frame["ok"] = _holes(rng, pd.array(rng.random(N) < 0.5, dtype="boolean"))
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20,
                                           random_state=0)
    return model.fit(frame, species), frame, "predict_proba"


def raw_strings() -> tuple[Any, pd.DataFrame, str]:
    """Free text read by an ordinal encoder that tells None (missing) from NaN (unknown)."""
    frame, species, rng = _frame(3)
    words = [None if gap else f"w{i}" for i, gap in
             zip(rng.integers(0, 80, N), rng.random(N) < 0.15, strict=True)]
    frame = frame[["island", "bill"]].assign(note=pd.Series(words, dtype=object))
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                             encoded_missing_value=-2)
    model = make_pipeline(ColumnTransformer([("num", "passthrough", ["bill"]),
                                             ("text", encoder, ["island", "note"])]),
                          HistGradientBoostingClassifier(max_iter=20, random_state=0))
    return model.fit(frame, species), frame, "predict_proba"


def regression() -> tuple[Any, pd.DataFrame, str]:
    """A regressor on floats, nullable integers and nullable booleans (pandas NA)."""
    frame, _, rng = _frame(4)
    frame = frame[["bill", "flipper", "year"]].assign(
        ok=_holes(rng, pd.array(rng.random(N) < 0.5, dtype="boolean")))
    y = frame["bill"].fillna(40).to_numpy() * 10 + frame["year"].to_numpy()
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0)
    return model.fit(frame, y), frame, "predict"


MODELS: dict[str, Callable[[], tuple[Any, pd.DataFrame, str]]] = {
    "onehot": one_hot, "native": native_categories, "strings": raw_strings,
    "regression": regression}


def package_all(folder: Path, only: Sequence[str] = ()) -> dict[str, Packaged]:
    """Every model of ``MODELS`` (or ``only`` these), packaged with ``baton.package``."""
    out = {}
    for name, build in MODELS.items():
        if only and name not in only:
            continue
        model, sample, method = build()
        path = baton.package(model, sample, name=name, version="1.0.0", path=folder / name,
                             method=method, sample_rows=12)
        out[name] = Packaged(name, model, sample, method, path)
    return out


# -- Records generated from a contract --------------------------------------------------------

def value_strategy(spec: FieldSpec) -> st.SearchStrategy[Any]:
    values: st.SearchStrategy[Any]
    if spec.categories is not None:
        values = st.sampled_from(spec.categories)
    elif spec.type == "float":
        values = st.sampled_from(FLOAT_EDGES) | st.floats(-1e6, 1e6, allow_nan=False)
    elif spec.type == "integer":
        edges = INT_EDGES if spec.nullable else (*INT_EDGES, 2**62, -(2**62))
        values = st.sampled_from(edges) | st.integers(-10**6, 10**6)
    elif spec.type == "boolean":
        values = st.booleans()
    else:
        values = st.sampled_from(TEXT_EDGES) | st.text(max_size=12)
    return st.none() | values if spec.nullable else values


def records(fields: tuple[FieldSpec, ...], max_size: int = 8
            ) -> st.SearchStrategy[list[dict[str, Any]]]:
    one = st.fixed_dictionaries({s.name: value_strategy(s) for s in fields})
    return st.lists(one, min_size=1, max_size=max_size)


def coverage(fields: tuple[FieldSpec, ...]) -> list[dict[str, Any]]:
    """Every category of every field once, and a record with every nullable field null."""
    base = {s.name: _first(s) for s in fields}
    out = [{**base, **{s.name: None for s in fields if s.nullable}}]
    for s in fields:
        out += [{**base, s.name: c} for c in s.categories or ()]
    return out


def _first(spec: FieldSpec) -> Any:
    if spec.categories is not None:
        return spec.categories[0]
    return {"float": 1.5, "integer": 2008, "boolean": True, "string": "w1"}[spec.type]


#: How far two answers for one record may differ: the last bits of a float depend on the
#: shape of the batch in the model's own linear algebra (BLAS kernels), in the notebook as
#: in a worker (seen: 5.288930917995911e-165 alone, 5.2889309179956105e-165 in a batch of
#: two). Anything Baton did to a record (a null read as another value) is far larger.
REL_TOL = 1e-9


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """The same answers: equal keys and labels, floats within :data:`REL_TOL`."""
    if len(a) != len(b):
        return False
    return all(x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
               for x, y in zip(a, b, strict=True))


def _close(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=REL_TOL,
                                                                 abs_tol=1e-300)
    return bool(x == y) and type(x) is type(y)


# -- One set of records for every path ---------------------------------------------------------

#: What each V2 input carries for a field of each type.
V2_DATATYPES = {"float": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}


def sample_records(fields: tuple[FieldSpec, ...], n: int, seed: int) -> list[dict[str, Any]]:
    """``coverage`` and ``n`` records drawn from the same values as ``records``, a tenth of
    them broken in a way every format can carry (a category not allowed, a null where none
    is, a fraction in an integer field)."""
    rnd = random.Random(seed)
    out = coverage(fields)
    for _ in range(n):
        rec = {s.name: _draw(s, rnd) for s in fields}
        if rnd.random() < 0.1:
            rec.update(_broken(fields, rnd))
        out.append(rec)
    return out


def _draw(spec: FieldSpec, rnd: random.Random) -> Any:
    if spec.nullable and rnd.random() < 0.2:
        return None
    if spec.categories is not None:
        return rnd.choice(spec.categories)
    edge = rnd.random() < 0.3
    if spec.type == "float":
        return rnd.choice(FLOAT_EDGES) if edge else rnd.uniform(-1e3, 1e3)
    if spec.type == "integer":
        return rnd.choice(INT_EDGES) if edge else rnd.randint(-10**6, 10**6)
    if spec.type == "boolean":
        return rnd.random() < 0.5
    return rnd.choice(TEXT_EDGES) if edge else "".join(
        rnd.choice("abcé ,;'\"") for _ in range(rnd.randint(0, 8)))


def _broken(fields: tuple[FieldSpec, ...], rnd: random.Random) -> dict[str, Any]:
    spec = rnd.choice(fields)
    if spec.categories is not None and spec.type == "string":
        return {spec.name: "nope"}
    if not spec.nullable:
        return {spec.name: None}
    if spec.type == "integer":
        return {spec.name: 1.5}
    return {fields[0].name: None} if not fields[0].nullable else {}
