"""baton.package: a fitted model and a training sample become a bundle folder."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import baton
from baton.batch import Batch
from baton.bundle.archive import build_archive
from baton.bundle.manifest import BundleManifest
from baton.contract.spec import FieldSpec, TensorSpec
from baton.contract.validate import RecordsDecoder, check_outputs
from baton.errors import BundleError


def _penguin_like_frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 60
    frame = pd.DataFrame({
        "bill_length": rng.normal(44.0, 5.0, n).round(1),
        "flipper_length": rng.integers(170, 230, n).astype(np.int64),
        "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n).astype(object),
        "sex": rng.choice(["female", "male"], n).astype(object),
    })
    frame.loc[[3, 17, 40], "bill_length"] = np.nan
    frame.loc[[5, 22], "sex"] = None
    species = np.where(frame["flipper_length"] > 205, "Gentoo",
                       np.where(frame["island"] == "Dream", "Chinstrap", "Adelie"))
    return frame, species


def _pipeline() -> Pipeline:
    features = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         ["bill_length", "flipper_length"]),
        ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                      OneHotEncoder(handle_unknown="ignore")),
         ["island", "sex"]),
    ])
    return make_pipeline(features, LogisticRegression(max_iter=500))


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    frame, species = _penguin_like_frame()
    return _pipeline().fit(frame, species), frame


@pytest.fixture(scope="module")
def packaged(fitted: tuple[Pipeline, pd.DataFrame],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, frame = fitted
    out = tmp_path_factory.mktemp("sdk") / "penguins"
    return baton.package(model, frame, name="penguins", version="1.2.0", path=out,
                         owner="ds@example.com", sample_rows=12)


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_the_bundle_has_a_manifest_a_model_and_samples(packaged: Path) -> None:
    files = sorted(p.relative_to(packaged).as_posix() for p in packaged.rglob("*")
                   if p.is_file())
    assert files == ["baton.toml", "model/model.pkl", "monitoring/reference.json",
                     "samples/expected.json", "samples/input.json"]
    m = BundleManifest.load(packaged)
    assert (m.name, m.version, m.owner) == ("penguins", "1.2.0", "ds@example.com")
    assert (m.model.entrypoint, m.model.artifact, m.model.method) == \
        ("builtin:sklearn", "model/model.pkl", "predict_proba")
    assert m.environment.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert not [p.name for p in packaged.parent.iterdir() if p.name.startswith(".")]


def test_requirements_pin_the_installed_versions(packaged: Path) -> None:
    reqs = BundleManifest.load(packaged).environment.requirements
    pins = dict(r.split("==") for r in reqs)
    assert all("==" in r for r in reqs)
    for dist in ("scikit-learn", "numpy", "pandas", "scipy"):
        assert pins[dist] == md.version(dist)
    for name, version in pins.items():
        assert md.version(name) == version
    assert not {"pip", "setuptools", "wheel", "baton", "msgspec", "uvicorn"} & set(pins)


def test_the_contract_follows_the_sample(packaged: Path) -> None:
    contract = BundleManifest.load(packaged).contract
    assert contract.kind == "records"
    assert contract.unknown_fields == "reject"
    assert contract.inputs == (
        FieldSpec("bill_length", "float", nullable=True, dtype="float64"),
        FieldSpec("flipper_length", "integer", dtype="int64"),
        FieldSpec("island", "string", categories=("Biscoe", "Dream", "Torgersen"),
                  dtype="str"),
        FieldSpec("sex", "string", nullable=True, categories=("female", "male"), dtype="str"),
    )
    assert contract.outputs == (
        FieldSpec("prediction", "string", categories=("Adelie", "Chinstrap", "Gentoo")),
        FieldSpec("proba_Adelie", "float", min=0.0, max=1.0),
        FieldSpec("proba_Chinstrap", "float", min=0.0, max=1.0),
        FieldSpec("proba_Gentoo", "float", min=0.0, max=1.0),
    )


def test_samples_hold_rows_with_gaps_and_the_models_own_outputs(
        packaged: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    model, _ = fitted
    records = _json(packaged / "samples" / "input.json")
    expected = _json(packaged / "samples" / "expected.json")
    assert len(records) == len(expected) == 12
    assert any(r["bill_length"] is None for r in records)
    assert any(r["sex"] is None for r in records)

    proba = model.predict_proba(pd.DataFrame.from_records(records))
    classes = list(model.classes_)
    assert [e["prediction"] for e in expected] == [classes[i] for i in proba.argmax(axis=1)]
    for i, cls in enumerate(classes):
        assert [e[f"proba_{cls}"] for e in expected] == pytest.approx(proba[:, i].tolist(),
                                                                      abs=1e-12)


def test_samples_satisfy_the_bundles_own_contract(packaged: Path) -> None:
    contract = BundleManifest.load(packaged).contract
    batch = RecordsDecoder(contract).decode((packaged / "samples" / "input.json").read_bytes())
    assert batch.rows == 12
    expected = _json(packaged / "samples" / "expected.json")
    outputs = Batch({name: [e[name] for e in expected] for name in contract.output_names},
                    len(expected))
    check_outputs(contract, outputs, batch.rows)


def test_the_bundle_builds_into_an_archive(packaged: Path, tmp_path: Path) -> None:
    built = build_archive(packaged, tmp_path / "dist")
    assert built.path.name == "penguins-1.2.0.baton"


def test_a_non_empty_target_is_kept_unless_overwrite(fitted: tuple[Pipeline, pd.DataFrame],
                                                     tmp_path: Path) -> None:
    model, frame = fitted
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not empty"):
        baton.package(model, frame, name="penguins", path=target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]

    baton.package(model, frame, name="penguins", path=target, overwrite=True)
    assert not (target / "notes.txt").exists()
    assert BundleManifest.load(target).name == "penguins"


def test_a_class_defined_in_main_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import pandas as pd
        import baton

        class Doubler:
            def predict(self, frame):
                return np.asarray(frame["x"]) * 2.0

        baton.package(Doubler(), pd.DataFrame({"x": [1.0, 2.0]}), name="doubler",
                      path=sys.argv[1])
    """))
    target = tmp_path / "doubler"
    proc = subprocess.run([sys.executable, str(script), str(target)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("baton.errors.BundleError: the model refers to objects defined")
    assert "(__main__)" in last and "code=[...]" in last
    assert not target.exists()


def test_local_code_travels_with_the_bundle_and_is_not_pinned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    module = tmp_path / "src" / "scaling.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent("""
        import numpy as np

        class Halver:
            def predict(self, frame):
                return np.asarray(frame["x"], dtype=float) / 2.0
    """))
    monkeypatch.syspath_prepend(str(module.parent))
    request.addfinalizer(lambda: sys.modules.pop("scaling", None))
    import scaling  # type: ignore[import-not-found]

    path = baton.package(scaling.Halver(), pd.DataFrame({"x": [1.0, 4.0]}), name="halver",
                         path=tmp_path / "halver", code=[module])
    assert (path / "scaling.py").read_text() == module.read_text()
    pins = [r.split("==")[0] for r in BundleManifest.load(path).environment.requirements]
    assert "scaling" not in pins
    assert "pandas" in pins


def test_an_array_sample_gives_a_tensor_contract(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] + X[:, 2] > 0).astype(np.int64)
    model = LogisticRegression().fit(X, y)
    path = baton.package(model, X, name="arrays", path=tmp_path / "arrays", sample_rows=5)
    contract = BundleManifest.load(path).contract
    assert contract.kind == "tensors"
    assert contract.inputs == (TensorSpec("input-0", "FP64", (-1, 3)),)
    assert contract.outputs == (TensorSpec("predict_proba", "FP64", (-1, 2)),)
    sample = _json(path / "samples" / "input.json")
    assert np.asarray(sample["input-0"]) == pytest.approx(X[:5])
    expected = _json(path / "samples" / "expected.json")
    assert np.asarray(expected["predict_proba"]) == pytest.approx(model.predict_proba(X[:5]))
    pins = [r.split("==")[0] for r in BundleManifest.load(path).environment.requirements]
    assert "scikit-learn" in pins and "numpy" in pins


def test_a_regressor_predicts_a_float_field(tmp_path: Path) -> None:
    frame = pd.DataFrame({"area": [50.0, 80.0, 120.0, 65.0], "rooms": [2, 3, 5, 2]})
    model = LinearRegression().fit(frame, [150.0, 240.0, 370.0, 190.0])
    path = baton.package(model, frame, name="prices", path=tmp_path / "prices")
    m = BundleManifest.load(path)
    assert m.model.method == "predict"
    assert m.contract.outputs == (FieldSpec("prediction", "float"),)
    expected = [e["prediction"] for e in _json(path / "samples" / "expected.json")]
    assert expected == pytest.approx(model.predict(frame).tolist())


def test_integer_classes_give_integer_predictions(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    model = LogisticRegression().fit(frame, [0, 0, 0, 1, 1, 1])
    path = baton.package(model, frame, name="ints", path=tmp_path / "ints")
    outputs = BundleManifest.load(path).contract.outputs
    assert [o.name for o in outputs] == ["prediction", "proba_0", "proba_1"]
    assert outputs[0] == FieldSpec("prediction", "integer", categories=(0, 1))


def test_a_column_missing_in_every_row_is_warned_about(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0],
                          "note": pd.Series([None] * 4, dtype=object)})
    model = make_pipeline(ColumnTransformer([("x", "passthrough", ["x"])]),
                          LinearRegression()).fit(frame, [1.0, 2.0, 3.0, 4.0])
    with pytest.warns(baton.sdk.PackagingWarning,
                      match=r"column 'note' is missing in every row of the sample: its type "
                            r"in the contract \(object\) is a guess"):
        path = baton.package(model, frame, name="gaps", path=tmp_path / "gaps")
    note = BundleManifest.load(path).contract.inputs[1]
    assert (note.type, note.nullable) == ("string", True)


def test_a_pin_no_index_can_provide_is_warned_about(tmp_path: Path) -> None:
    # This checkout's baton is installed from its folder: an index has no such build.
    mine = f"baton=={md.version('baton')}"
    assert [p for p, _ in baton.sdk.unreachable_pins([mine, "torch==2.1.0+cpu", "numpy==1"])
            ] == [mine, "torch==2.1.0+cpu"]
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    model = LinearRegression().fit(frame, [0.0, 1.0, 2.0, 3.0])
    with pytest.warns(baton.sdk.PackagingWarning,
                      match=rf"the bundle pins {mine}, which was installed from a local "
                            r"folder \(editable\)"):
        baton.package(model, frame, name="pinned", path=tmp_path / "pinned",
                      extra_requirements=[mine])
