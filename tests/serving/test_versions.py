"""The version table in an engine: a canary and a shadow are served, watched for drift and
removed with their model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from baton.bundle.loader import open_bundle
from baton.contract.spec import FieldSpec
from baton.env.builder import EnvBuilder
from baton.errors import ModelNotFound
from baton.monitor.drift import reference_profile
from baton.serving.service import Engine, ModelService
from baton.settings import Settings
from tests.conftest import records_contract, write_bundle
from tests.monitor.webhook import Webhook, running, until

CODE = '''
class Model:
    def predict(self, inputs):
        return {{"y": [x * {factor} for x in inputs["x"]]}}
'''
MONITORING = '[monitoring]\nreference = "monitoring/reference.json"\n'


def service(root: Path, settings: Settings, version: str, factor: float) -> ModelService:
    """Scorer ``version`` (``y = x * factor``), with a drift reference of x ~ N(0, 1)."""
    path = write_bundle(root / f"scorer-{version}", name="scorer", manifest_extra=MONITORING,
                        code=CODE.format(factor=factor),
                        contract=records_contract(inputs={"x": "float"},
                                                  outputs={"y": "float"}))
    manifest = path / "baton.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"',
                                                     f'version = "{version}"'))
    train = pd.DataFrame({"x": np.random.default_rng(3).normal(0, 1, 2000)})
    (path / "monitoring").mkdir()
    (path / "monitoring" / "reference.json").write_text(
        json.dumps(reference_profile(train, [FieldSpec("x", "float")])))
    bundle = open_bundle(path, settings.bundles_dir)
    env = EnvBuilder(settings.envs_dir).ensure(bundle.manifest.environment)
    return ModelService(bundle, env, settings)


def shifted() -> bytes:
    """400 rows far from the reference: x drifts."""
    return orjson.dumps([{"x": float(v)} for v in np.random.default_rng(4).normal(5, 1, 400)])


@pytest.mark.slow
def test_canary_and_shadow_versions_raise_drift_alerts(baton_home: Path,
                                                      tmp_path: Path) -> None:
    async def scenario(hook: Webhook) -> None:
        settings = Settings(home=baton_home, workers=1, drift_interval=0.05,
                            drift_webhook=hook.url)
        live, canary, shadow = (service(tmp_path, settings, v, f) for v, f in
                                (("1.0.0", 2.0), ("2.0.0", 3.0), ("3.0.0", 5.0)))
        engine = Engine([live], settings)
        engine.add_canary(canary, 0.0)  # it answers only when asked for by version
        engine.add_shadow(shadow)
        await engine.start()
        try:
            await until(lambda: all(s.ready for s in (live, canary, shadow)), "all ready")
            await engine.lookup("scorer", "2.0.0").predict_records(shifted())
            await engine.get("scorer").predict_records(shifted())  # mirrored to 3.0.0
            await until(lambda: {a["version"] for a in hook.received} ==
                        {"1.0.0", "2.0.0", "3.0.0"}, "an alert from every version")
            assert all(a["feature"] == "x" and a["model"] == "scorer"
                       for a in hook.received)
            assert [len(s.drift_alerts) for s in (live, canary, shadow)] == [1, 1, 1]
        finally:
            await engine.close()

    with running(Webhook()) as hook:
        asyncio.run(scenario(hook))


@pytest.mark.slow
def test_remove_takes_the_canary_and_shadow_out_with_the_live_version(
        baton_home: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = Settings(home=baton_home, workers=1)
        live, canary, shadow = (service(tmp_path, settings, v, f) for v, f in
                                (("1.0.0", 2.0), ("2.0.0", 3.0), ("3.0.0", 5.0)))
        engine = Engine([live], settings)
        engine.add_canary(canary, 0.5)
        engine.add_shadow(shadow)
        await engine.start()
        try:
            assert [(e.role, e.service.version) for e in engine.versions.entries()] == [
                ("live", "1.0.0"), ("canary", "2.0.0"), ("shadow", "3.0.0")]
            await engine.remove("scorer")
            assert engine.versions.entries() == [] and engine.versions.services() == []
            assert dict(engine.models) == {} and live.shadow is None
            assert all(s.pool.closing for s in (live, canary, shadow))
            for version in (None, "1.0.0", "2.0.0"):
                with pytest.raises(ModelNotFound):
                    engine.get("scorer", version)
        finally:
            await engine.close()

    asyncio.run(scenario())
