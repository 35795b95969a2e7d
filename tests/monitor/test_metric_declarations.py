"""A declared quality metric the model's prediction field cannot yield is refused when the
bundle is loaded as a service (it used to yield nothing, silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.bundle.loader import open_bundle
from baton.env.builder import EnvBuilder
from baton.errors import BundleError
from baton.serving.service import ModelService
from baton.settings import Settings
from tests.conftest import records_contract, write_bundle


def load(baton_home: Path, root: Path, output: str, metrics: str) -> ModelService:
    path = write_bundle(root / f"{output}-{abs(hash(metrics))}", name="m",
                        manifest_extra=f"[monitoring]\nmetrics = {metrics}\n",
                        contract=records_contract(inputs={"x": "float"},
                                                  outputs={"prediction": output}))
    settings = Settings(home=baton_home)
    bundle = open_bundle(path, settings.bundles_dir)
    return ModelService(bundle, EnvBuilder(settings.envs_dir).ensure(
        bundle.manifest.environment), settings)


@pytest.mark.parametrize(("output", "metrics", "metric"), [
    ("string", '["accuracy", "mae"]', "mae"),
    ("integer", '["rmse"]', "rmse"),
    ("boolean", '["mae"]', "mae"),
    ("float", '["accuracy"]', "accuracy"),
])
def test_a_metric_that_cannot_apply_is_refused(baton_home: Path, tmp_path: Path, output: str,
                                               metrics: str, metric: str) -> None:
    with pytest.raises(BundleError) as info:
        load(baton_home, tmp_path, output, metrics)
    err = info.value
    assert err.code == "METRIC_NOT_APPLICABLE"
    assert (err.details["metric"], err.details["field"], err.details["kind"]) == (
        metric, "prediction", output)
    assert repr(metric) in err.message and output in err.message


@pytest.mark.parametrize(("output", "metrics"), [
    ("string", '["accuracy"]'), ("float", '["mae", "rmse"]'),
    ("integer", '["accuracy", "metrics:f1"]'),  # a function of the bundle: its own call
])
def test_metrics_that_apply_load(baton_home: Path, tmp_path: Path, output: str,
                                 metrics: str) -> None:
    svc = load(baton_home, tmp_path, output, metrics)
    assert svc.bundle.manifest.monitoring.metrics
