"""Two bundles needing conflicting scikit-learn releases, served side by side by one engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Server, records_contract, write_bundle

CODE = '''
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression


class Model:
    def load(self, bundle_dir):
        x = np.array([[0.0], [1.0], [2.0], [3.0]])
        self.clf = LogisticRegression().fit(x, [0, 0, 1, 1])

    def predict(self, inputs):
        proba = self.clf.predict_proba(inputs["x"].to_numpy().reshape(-1, 1))[:, 1]
        return {"p": proba, "sklearn": [sklearn.__version__] * len(proba)}
'''

CONTRACT = records_contract(
    inputs={"x": "float"},
    outputs={"p": {"type": "float", "min": 0.0, "max": 1.0}, "sklearn": "string"})

RELEASES = {"old": ["scikit-learn==1.5.2", "numpy==2.1.3", "pandas==2.2.3"],
            "new": ["scikit-learn==1.7.2", "numpy==2.3.5", "pandas==2.3.3"]}


@pytest.mark.slow
def test_conflicting_library_versions_run_side_by_side(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    bundles = [write_bundle(tmp_path / name, name=f"sk-{name}", code=CODE, contract=CONTRACT,
                            requirements=reqs) for name, reqs in RELEASES.items()]
    server = serve(bundles)
    envs = set()
    for name, reqs in RELEASES.items():
        resp = server.client.post(f"/v1/models/sk-{name}/predict", json=[{"x": 0.0}, {"x": 3}])
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]
        assert {p["sklearn"] for p in preds} == {reqs[0].split("==")[1]}
        assert preds[0]["p"] < 0.5 < preds[1]["p"]
        envs.add(server.model(f"sk-{name}")["parameters"]["environment"])
    assert len(envs) == 2
