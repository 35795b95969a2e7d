"""R models served by the engine: the example R bundle (a random forest on R's iris, written
by the R package in r/baton) beside the Python example, in one `baton serve`, through the
real R runner and the bundle's own R library; `baton check` proves it; the sandbox runs it."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, ROOT, Server, run_baton

IRIS = ROOT / "examples" / "iris-r" / "bundle"
CLASSES = ("setosa", "versicolor", "virginica")


@pytest.fixture(scope="module", autouse=True)
def r_installed() -> None:
    assert shutil.which("Rscript"), "R is missing: apt-get install r-base-core " \
        "r-cran-randomforest (scripts/ensure-packages.sh installs them)"


def samples() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (json.loads((IRIS / "samples" / "input.json").read_text()),
            json.loads((IRIS / "samples" / "expected.json").read_text()))


def close(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return got.keys() >= want.keys() and all(
        got[k] == v if isinstance(v, str) else math.isclose(got[k], v, abs_tol=1e-9)
        for k, v in want.items())


def test_one_engine_serves_the_r_and_the_python_example(serve: Callable[..., Server]) -> None:
    server = serve([IRIS, EXAMPLE])
    iris = server.model("iris")
    assert iris["platform"] == "baton-r" and iris["parameters"]["ready"]
    assert iris["parameters"]["environment"].startswith("r-")
    rows, expected = samples()
    resp = server.client.post("/v1/models/iris/predict", json=rows)
    assert resp.status_code == 200, resp.text
    got = resp.json()["predictions"]
    assert len(got) == len(expected)
    assert all(close(g, w) for g, w in zip(got, expected, strict=True)), (got, expected)
    assert {g["prediction"] for g in got} == set(CLASSES)
    # V2 with the columns as tensors, as KServe's clients send them (raw FP64 to R).
    body = {"inputs": [{"name": k, "datatype": "FP64", "shape": [len(rows)],
                        "data": [r[k] for r in rows]} for k in rows[0]]}
    v2 = server.client.post("/v2/models/iris/infer", json=body)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert outputs["prediction"] == [w["prediction"] for w in expected]
    # The contract holds for an R model as for any: a string where a float goes is a 422.
    bad = server.client.post("/v1/models/iris/predict",
                             json=[{**rows[0], "Petal.Width": "wide"}])
    assert bad.status_code == 422 and \
        bad.json()["details"]["violations"][0]["field"] == "Petal.Width"
    penguins = server.client.post("/v1/models/penguins/predict", json=json.loads(
        (EXAMPLE / "samples" / "input.json").read_text())[:2])
    assert penguins.status_code == 200, penguins.text
    log = server.output()
    assert "iris" in log and "penguins" in log


def test_check_proves_the_r_example_and_its_pinned_packages(baton_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    r = run_baton("check", IRIS, "--report", tmp_path / "check.json", "--iterations", "20",
                  env=baton_env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"], report
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["dependency_resolution"]["ok"] and stages["sample_mismatch"]["ok"]
    m = report["measurements"]
    assert m["environment"]["key"].startswith("r-")
    assert m["sample_largest_difference"] <= 1e-9
    assert m["latency"]["rows_100"]["p50_ms"] > 0 and m["memory_mb"]["worker_peak_rss_mb"] > 0


def test_an_r_worker_runs_in_the_sandbox(serve: Callable[..., Server]) -> None:
    server = serve([IRIS], env={"BATON_ISOLATION": "sandbox"})
    rows, expected = samples()
    resp = server.client.post("/v1/models/iris/predict", json=rows[:3])
    assert resp.status_code == 200, resp.text + server.output()
    assert [g["prediction"] for g in resp.json()["predictions"]] == \
        [w["prediction"] for w in expected[:3]]
    [worker] = [w for w in server.model("iris")["parameters"]["workers"]
                if w["state"] == "ready"]
    cmdline = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().split(b"\0")
    assert any(arg.endswith(b"runner.R") for arg in cmdline), cmdline  # R itself, not bwrap


NOISY = """
noisy <- function(newdata) {
  system("echo from-a-shell")          # writes to fd 1 itself, as C code's printf() would
  print("from print")
  list(prediction = 2 * newdata$x + 1)
}
"""


def test_what_an_r_model_writes_to_its_standard_output_reaches_the_log_not_the_protocol(
        tmp_path: Path) -> None:
    """Base R cannot move fd 1, so the engine starts R with the protocol on fd 3 and fd 1 on
    standard error: a model running a command (or C code calling printf) cannot corrupt the
    stream, under uvloop's socketpairs as under pipes."""
    import asyncio

    import numpy as np
    import uvloop

    from baton.batch import Batch
    from baton.runtime.runners import R
    from baton.runtime.worker import Worker, WorkerSpec

    (tmp_path / "noisy.R").write_text(NOISY)
    rscript = shutil.which("Rscript")
    assert rscript is not None
    spec = WorkerSpec(
        model="noisy", python=Path(rscript), bundle_dir=tmp_path, runner=R, load_timeout=60,
        load={"model": {"runner": "r", "entrypoint": "noisy.R:noisy", "method": "predict"},
              "kind": "records", "inputs": ["x"], "outputs": ["prediction"],
              "fields": [{"name": "x", "type": "float"}]})

    async def body() -> None:
        worker = Worker(spec, 0)
        await worker.start()
        try:
            for _ in range(3):
                got = await worker.predict(Batch({"x": np.array([1.0, 2.0])}, 2), 30)
                assert list(got.columns["prediction"]) == [3.0, 5.0]
            deadline = asyncio.get_running_loop().time() + 30  # standard error is its own pipe
            while not all(any(w in line for line in worker.last_output)
                          for w in ("from-a-shell", "from print")):
                assert asyncio.get_running_loop().time() < deadline, worker.last_output
                await asyncio.sleep(0.05)
        finally:
            await worker.stop(grace=10)
        assert worker.returncode == 0
    uvloop.run(asyncio.wait_for(body(), 120))
