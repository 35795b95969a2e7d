"""Reading baton.toml: each invalid manifest is refused with the field it got wrong."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from baton.bundle.manifest import BundleManifest
from baton.errors import ManifestError

from .conftest import MakeBundle

Edit = Callable[[dict[str, Any]], object]


@pytest.fixture
def load_edited(make_bundle: MakeBundle) -> Callable[[Edit], BundleManifest]:
    """Edit a working bundle's baton.toml as TOML data, write it back and load it."""
    bundle = make_bundle()
    manifest = bundle / "baton.toml"
    original = tomllib.loads(manifest.read_text())

    def load(edit: Edit) -> BundleManifest:
        data = tomllib.loads(tomli_w.dumps(original))
        edit(data)
        manifest.write_text(tomli_w.dumps(data))
        return BundleManifest.load(bundle)

    return load


def test_scaffolded_manifest_loads(load_edited: Callable[[Edit], BundleManifest]) -> None:
    m = load_edited(lambda d: None)
    assert (m.name, m.version) == ("demo", "0.1.0")
    assert (m.model.runner, m.model.entrypoint, m.model.artifact) == \
        ("python", "model.predict:Model", None)
    assert m.environment.python == "3.11"
    assert m.environment.requirements == ()
    assert m.contract.input_names == ["amount", "country", "age"]
    assert m.samples is not None and m.samples.tolerance == 1e-9
    assert (m.serving.workers, m.serving.timeout) == (0, 0.0)  # left to the engine


def test_manifest_round_trips_through_its_own_toml(make_bundle: MakeBundle,
                                                    tmp_path: Path) -> None:
    m = BundleManifest.load(make_bundle())
    other = tmp_path / "copy"
    other.mkdir()
    m.write(other)
    assert BundleManifest.load(other) == m


def _r_model(model: dict[str, Any] | None = None,
             environment: dict[str, Any] | None = None) -> Edit:
    """The bundle turned into an R model (``runner = "r"``), with ``model`` and
    ``environment`` replacing what an R model's manifest says."""
    def edit(d: dict[str, Any]) -> None:
        d["model"] = {"runner": "r", "artifact": "model.rds", "method": "predict",
                      **(model or {})}
        d["environment"] = environment if environment is not None else {
            "r": "4.2", "requirements": ["randomForest==4.7-1.1"]}
    return edit


def _drop(section: str, key: str) -> Edit:
    return lambda d: d[section].pop(key)


def _set(section: str, **values: Any) -> Edit:
    return lambda d: d[section].update(values)


def _builtin_without_artifact(d: dict[str, Any]) -> None:
    d["model"]["entrypoint"] = "builtin:sklearn"
    d["model"].pop("artifact", None)


@pytest.mark.parametrize(("edit", "field", "message"), [
    pytest.param(lambda d: d.pop("bundle"), "bundle", "lacks the [bundle] section",
                 id="missing-bundle"),
    pytest.param(lambda d: d.pop("environment"), "environment",
                 "lacks the [environment] section", id="missing-environment"),
    pytest.param(lambda d: d.update(bundle="demo"), "bundle", "bundle must be a table",
                 id="bundle-not-a-table"),
    pytest.param(_drop("bundle", "name"), "bundle.name", "lacks required field bundle.name",
                 id="missing-name"),
    pytest.param(_set("bundle", name="My Model"), "bundle.name",
                 "bundle.name must be lower-case letters", id="invalid-name"),
    pytest.param(_set("bundle", name=""), "bundle.name", "must be a non-empty string",
                 id="empty-name"),
    pytest.param(_set("bundle", version="1 0"), "bundle.version", "bundle.version must be",
                 id="invalid-version"),
    pytest.param(_set("environment", requirements=["six==1.16.0", "numpy>=1"]),
                 "environment.requirements", "not pinned: numpy>=1", id="unpinned"),
    pytest.param(_set("environment", requirements=["numpy"]), "environment.requirements",
                 "not pinned: numpy", id="bare-name"),
    pytest.param(_set("environment", requirements=["numpy==1.*"]),
                 "environment.requirements", "not pinned: numpy==1.*", id="wildcard"),
    pytest.param(_set("environment", requirements="six==1.16.0"), "environment.requirements",
                 "must be a list of strings", id="requirements-not-a-list"),
    pytest.param(_set("environment", python="python3.11"), "environment.python",
                 "environment.python must be a version such as '3.11'", id="bad-python"),
    pytest.param(_set("environment", python="2.7"), "environment.python",
                 "got '2.7'", id="python-2"),
    pytest.param(_set("environment", python=3.11), "environment.python",
                 "must be a non-empty string, got 3.11", id="python-as-number"),
    pytest.param(_set("model", artifact="../model.pkl"), "model.artifact",
                 "model.artifact must be a relative path inside the bundle", id="dotdot"),
    pytest.param(_set("model", artifact="model/../../x.pkl"), "model.artifact",
                 "relative path inside the bundle", id="dotdot-inside"),
    pytest.param(_set("model", artifact="/srv/model.pkl"), "model.artifact",
                 "relative path inside the bundle", id="absolute-artifact"),
    pytest.param(_builtin_without_artifact, "model.artifact",
                 "model.artifact is required for builtin:sklearn", id="builtin-no-artifact"),
    pytest.param(_set("model", entrypoint="predict.py"), "model.entrypoint",
                 "'builtin:sklearn' or 'module.path:Class'", id="bad-entrypoint"),
    pytest.param(_set("model", method="transform"), "model.method",
                 "'predict' or 'predict_proba'", id="bad-method"),
    pytest.param(_set("model", runner="java"), "model.runner", "one of python",
                 id="bad-runner"),
    pytest.param(_set("samples", input="../in.json"), "samples.input",
                 "samples.input must be a relative path", id="samples-outside"),
    pytest.param(_set("samples", tolerance=-1), "samples.tolerance", "a number >= 0",
                 id="negative-tolerance"),
    pytest.param(_set("serving", workers=0), "serving.workers", "an integer >= 1",
                 id="zero-workers"),
    pytest.param(_set("serving", workers=True), "serving.workers", "an integer >= 1",
                 id="bool-workers"),
    pytest.param(_set("serving", timeout=0), "serving.timeout", "a number >= 0.001",
                 id="zero-timeout"),
    pytest.param(_set("serving", worker=4), "serving.worker",
                 "unknown fields in baton.toml: serving.worker", id="misspelt-serving-key"),
    pytest.param(_set("environment", requirement=["six==1.16.0"]),
                 "environment.requirement", "environment.requirement", id="misspelt-env-key"),
    pytest.param(_set("bundle", colour="red"), "bundle.colour", "bundle.colour",
                 id="unknown-bundle-key"),
    pytest.param(_r_model(environment={"r": "4.2", "python": "3.11"}), "environment.python",
                 "absent for runner 'r'", id="r-with-python"),
    pytest.param(_r_model(environment={"requirements": []}), "environment.r",
                 "lacks required field environment.r", id="r-without-version"),
    pytest.param(_r_model(environment={"r": "R-4"}), "environment.r",
                 "R's major.minor version", id="r-bad-version"),
    pytest.param(_r_model(model={"entrypoint": "score.py:score"}), "model.entrypoint",
                 "'builtin:rds' or 'file.R:function' for runner 'r'", id="r-python-entrypoint"),
    pytest.param(_r_model(model={"entrypoint": "../score.R:score"}), "model.entrypoint",
                 "'file.R:function'", id="r-entrypoint-outside"),
    pytest.param(_r_model(model={"entrypoint": "builtin:sklearn"}), "model.entrypoint",
                 "for runner 'r'", id="r-sklearn"),
    pytest.param(_set("environment", r="4.2"), "environment.r",
                 "absent for runner 'python'", id="python-with-r"),
    pytest.param(lambda d: d["contract"]["inputs"][0].update(type="double"), "contract",
                 "[contract] is invalid: field 'amount': type must be one of",
                 id="invalid-contract"),
])
def test_invalid_manifest_names_the_field(load_edited: Callable[[Edit], BundleManifest],
                                          edit: Edit, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_edited(edit)
    err = info.value
    assert err.code == "INVALID_MANIFEST"
    assert err.exit_code == 2
    assert err.details["field"] == field
    assert message in err.message


def test_an_r_model_names_its_r_version_and_r_packages(
        load_edited: Callable[[Edit], BundleManifest], make_bundle: MakeBundle,
        tmp_path: Path) -> None:
    m = load_edited(_r_model())
    assert (m.model.runner, m.model.entrypoint, m.model.artifact) == \
        ("r", "builtin:rds", "model.rds")  # builtin:rds is the R runner's default
    assert (m.environment.r, m.environment.python) == ("4.2", "")
    assert m.environment.requirements == ("randomForest==4.7-1.1",)
    m.write(tmp_path)
    written = tomllib.loads((tmp_path / "baton.toml").read_text())
    assert written["environment"] == {"r": "4.2", "requirements": ["randomForest==4.7-1.1"]}
    assert BundleManifest.load(tmp_path) == m
    custom = load_edited(_r_model(model={"entrypoint": "R/score.R:score"}))
    assert custom.model.entrypoint == "R/score.R:score"


def test_unknown_section_is_named(load_edited: Callable[[Edit], BundleManifest]) -> None:
    with pytest.raises(ManifestError) as info:
        load_edited(lambda d: d.update(deploy={"replicas": 2}))
    assert info.value.message == "unknown sections in baton.toml: deploy"
    assert info.value.details["fields"] == ["deploy"]


def test_pins_with_extras_and_markers_are_exact(
        load_edited: Callable[[Edit], BundleManifest]) -> None:
    reqs = ["uvicorn[standard]==0.30.0", "numpy==1.26.4 ; python_version < '3.13'"]
    m = load_edited(_set("environment", requirements=reqs))
    assert m.environment.requirements == tuple(reqs)


def test_a_folder_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no baton.toml in"):
        BundleManifest.load(tmp_path)


def test_manifest_that_is_not_toml_is_refused(make_bundle: MakeBundle) -> None:
    bundle = make_bundle()
    (bundle / "baton.toml").write_text("[bundle\nname = ")
    with pytest.raises(ManifestError, match="baton.toml is not valid TOML"):
        BundleManifest.load(bundle)
