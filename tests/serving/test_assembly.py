"""The library builds an engine from a typed spec, without click: what a test, an image
entrypoint or a cluster backend does instead of ``baton serve``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from baton.deployment import CanarySpec, DeploymentSpec, EngineSpec
from baton.errors import SettingsError
from baton.serving.assembly import build_engine
from baton.settings import Settings
from tests.conftest import EXAMPLE, free_port, run_baton


def test_an_engine_built_from_a_spec_serves_the_example(baton_home: Path) -> None:
    settings = Settings(home=baton_home, workers=1)
    engine = build_engine(EngineSpec((DeploymentSpec(str(EXAMPLE)),)), settings)
    inputs = json.loads((EXAMPLE / "samples" / "input.json").read_text())
    expected = json.loads((EXAMPLE / "samples" / "expected.json").read_text())

    async def serve() -> list[dict[str, object]]:
        await engine.start()
        try:
            assert engine.ready
            body = await engine.get("penguins").predict_records(json.dumps(inputs).encode())
            return list(json.loads(body)["predictions"])
        finally:
            await engine.close()

    outputs = asyncio.run(serve())
    assert [o["prediction"] for o in outputs] == [e["prediction"] for e in expected]
    assert [o["proba_Adelie"] for o in outputs] == pytest.approx(
        [e["proba_Adelie"] for e in expected], abs=1e-6)


@pytest.mark.parametrize("weight", [1.5, -0.1, float("nan")])
def test_a_canary_weight_out_of_range_is_refused_as_serve_refuses_it(
        weight: float, baton_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as caught:
        EngineSpec((DeploymentSpec(str(EXAMPLE)),), canary=CanarySpec(str(EXAMPLE), weight))
    err = caught.value
    assert (err.code, err.exit_code, err.details["field"]) == ("INVALID_SETTING", 2, "canary")
    if weight == 1.5:  # the very error `baton serve --canary REF=150` prints
        r = run_baton("serve", EXAMPLE, "--port", str(free_port()), "--canary",
                      f"{EXAMPLE}=150", env=baton_env)
        assert r.returncode == err.exit_code
        assert f"error [{err.code}]: {err.message}" in r.stderr
