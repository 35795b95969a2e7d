"""The example that `make run` serves: penguins, a scikit-learn pipeline with missing values."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, ROOT, Server, run_baton

RECORD = {"island": "Biscoe", "sex": None, "bill_length_mm": 48.0, "bill_depth_mm": None,
          "flipper_length_mm": 222.0, "body_mass_g": 5200.0, "year": 2008}


@pytest.mark.slow
def test_example_bundle_passes_check(baton_env: dict[str, str], tmp_path: Path) -> None:
    r = run_baton("check", EXAMPLE, "--report", tmp_path / "r.json", "--iterations", "5",
                  env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["bundle"]["name"] == "penguins"


@pytest.mark.slow
def test_example_is_served_and_the_printed_request_works(
        serve: Callable[..., Server]) -> None:
    server = serve([EXAMPLE])
    deadline = time.monotonic() + 60
    while "Try:" not in server.output():
        assert time.monotonic() < deadline, f"serve printed no request to try:\n{server.output()}"
        time.sleep(0.05)
    out = server.output()
    assert f"Baton is serving at {server.url}" in out
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl"))
    printed = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
    assert json.loads(printed.stdout)["predictions"][0]["prediction"] in (
        "Adelie", "Chinstrap", "Gentoo")

    resp = server.client.post("/v1/models/penguins/predict", json=[RECORD])
    assert resp.status_code == 200, resp.text
    [pred] = resp.json()["predictions"]
    assert pred["prediction"] == "Gentoo"
    total = pred["proba_Adelie"] + pred["proba_Chinstrap"] + pred["proba_Gentoo"]
    assert abs(total - 1.0) < 1e-9

    bad = server.client.post("/v1/models/penguins/predict", json=[{**RECORD, "island": "Mars"}])
    assert bad.status_code == 422
    assert bad.json()["details"]["violations"][0]["field"] == "island"


@pytest.mark.slow
def test_training_script_packages_a_bundle_that_checks(baton_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "examples/penguins/train.py"),
                    str(tmp_path / "penguins")], check=True, capture_output=True, timeout=300)
    r = run_baton("check", tmp_path / "penguins", "--report", tmp_path / "r.json",
                  "--iterations", "5", env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
