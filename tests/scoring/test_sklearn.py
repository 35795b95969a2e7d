"""A real scikit-learn model packaged with ``baton.package``: scores equal the model's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

import baton
from tests.scoring.conftest import read_jsonl, score

FEATURES = [f"f{i}" for i in range(6)]


@pytest.fixture(scope="session")
def logreg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression]:
    x, y = make_classification(n_samples=400, n_features=len(FEATURES), random_state=3)
    frame = pd.DataFrame(x, columns=FEATURES)
    model = LogisticRegression().fit(frame, y)
    path = baton.package(model, frame, name="logreg", version="2.0.0",
                         path=tmp_path_factory.mktemp("bundles") / "logreg")
    return path, model


def _inputs(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0, 2, (n, len(FEATURES))), columns=FEATURES)
    frame.insert(0, "account", [f"acc-{i:05d}" for i in range(n)])
    return frame


def test_scores_equal_the_models_own_and_join_back_by_id(
        logreg: tuple[Path, LogisticRegression], baton_env: dict[str, str],
        tmp_path: Path) -> None:
    bundle, model = logreg
    frame = _inputs(5_000, seed=1)
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "scores.parquet"
    r, report = score(bundle, tmp_path / "in.csv", out, baton_env, "--id-column", "account",
                      "--chunk-rows", "1024")
    assert r.returncode == 0, r.stderr
    scores = pq.read_table(out).to_pandas()
    assert list(scores.columns) == ["account", "prediction", "proba_0", "proba_1"]
    joined = frame.merge(scores, on="account", validate="one_to_one")
    assert len(joined) == 5_000 and list(scores["account"]) == list(frame["account"])
    want = model.predict_proba(joined[FEATURES])
    np.testing.assert_allclose(joined["proba_1"], want[:, 1], rtol=0, atol=1e-12)
    assert (joined["prediction"] == model.predict(joined[FEATURES])).all()
    assert report["scored"] == 5_000 and report["chunks"] == 5


def test_a_non_numeric_cell_costs_only_its_row(logreg: tuple[Path, LogisticRegression],
                                               baton_env: dict[str, str],
                                               tmp_path: Path) -> None:
    bundle, model = logreg
    frame = _inputs(300, seed=2).astype({"f2": object})
    frame.loc[120, "f2"] = "twelve"
    frame.loc[121, "f3"] = np.nan  # the packaged contract has no missing values
    frame.to_csv(tmp_path / "in.csv", index=False)
    r, report = score(bundle, tmp_path / "in.csv", tmp_path / "out.jsonl", baton_env)
    assert r.returncode == 0, r.stderr
    dead = {d["row"]: d for d in read_jsonl(tmp_path / "out.dead-letter.jsonl")}
    assert {k: (d["stage"], d["violations"][0]["field"]) for k, d in dead.items()} == {
        120: ("contract", "f2"), 121: ("contract", "f3")}
    scored = read_jsonl(tmp_path / "out.jsonl")
    assert [s["row"] for s in scored] == [i for i in range(300) if i not in (120, 121)]
    good = frame.drop(index=[120, 121]).astype({"f2": float})
    np.testing.assert_allclose([s["proba_0"] for s in scored],
                               model.predict_proba(good[FEATURES])[:, 0], atol=1e-12)
    assert report["dead_by_stage"] == {"contract": 2}
