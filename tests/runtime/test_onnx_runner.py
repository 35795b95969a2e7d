"""The ONNX runner end to end: ``baton.package(..., format="onnx")`` converts a fitted
scikit-learn model with skl2onnx, and ``baton check`` builds the bundle's own environment
(onnxruntime and numpy from the pins, no scikit-learn), serves the graph and proves it
gives the original model's answers within the tolerance, reporting the largest difference.
The runner's protocol behaviour is in test_runner_conformance.py."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import baton
from baton.errors import BundleError
from tests.conftest import run_baton

pytestmark = pytest.mark.slow


def checked(bundle: Path, env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    report = tmp_path / f"{bundle.name}-check.json"
    done = run_baton("check", bundle, "--report", report, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def manifest(bundle: Path) -> dict[str, Any]:
    return tomllib.loads((bundle / "baton.toml").read_text())


def test_a_tensor_model_and_a_records_pipeline_run_as_onnx(
        tmp_path: Path, baton_env: dict[str, str]) -> None:
    x, y = make_classification(300, 6, random_state=3)
    tensors = baton.package(LogisticRegression().fit(x, y), x, name="lr-onnx",
                            path=tmp_path / "lr-onnx", format="onnx")
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    frame["count"] = (np.abs(x[:, 0]) * 10).astype("int64")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)
    records = baton.package(pipeline, frame, name="pipe-onnx", path=tmp_path / "pipe-onnx",
                            format="onnx")
    for bundle in (tensors, records):
        m = manifest(bundle)
        assert m["model"]["runner"] == "onnx" and (bundle / m["model"]["artifact"]).is_file()
        pins = [r.split("==")[0].lower() for r in m["environment"]["requirements"]]
        assert "onnxruntime" in pins and "numpy" in pins
        assert "scikit-learn" not in pins and "pandas" not in pins  # not the framework
        report = checked(bundle, baton_env, tmp_path)
        assert report["passed"] is True, report
        largest = report["measurements"]["sample_largest_difference"]
        assert largest is not None and 0 <= largest <= 1e-6, largest
        note = next(s["note"] for s in report["stages"] if s["stage"] == "sample_mismatch")
        assert "largest difference" in note


def test_a_model_skl2onnx_cannot_convert_is_a_clear_error(tmp_path: Path) -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"colour": ["red", "blue", None, "red"], "size": [1.0, 2, 3, 4]})
    text = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder())
    model = make_pipeline(make_column_transformer((text, ["colour"]), remainder="passthrough"),
                          LogisticRegression()).fit(frame, [0, 1, 0, 1])
    with pytest.raises(BundleError, match="skl2onnx cannot convert this Pipeline to an ONNX"):
        baton.package(model, frame, name="nope", path=tmp_path / "nope", format="onnx")
    assert not (tmp_path / "nope").exists()
    with pytest.raises(BundleError, match="format must be 'pickle' or 'onnx'"):
        baton.package(model, frame, name="nope", path=tmp_path / "nope", format="pmml")
