"""The runner conformance suite: every runner passes it unchanged.

Each runner hosts the same model, ``prediction = 2 x + 1`` on a records contract (``x`` and
``prediction`` nullable floats), and the engine's own :class:`~baton.runtime.worker.Worker`
drives it over the real protocol in a real process: start and load, a good batch, missing
values, an empty batch, input the model refuses, a ``metrics`` request, an unknown message,
a crash and a hang in the middle of a request, and unloading. The runners: Python (a bundle's own
``module:Class``), ONNX (a scikit-learn regression converted by skl2onnx), R (runner.R: a
bundle's own ``file.R:function`` with an ``.rds`` artifact, run by ``Rscript``, which must be
installed), and ``doc``, a runner written from docs/protocol.md alone
(tests/runtime/doc_runner.py). A new runner joins by adding a case.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from baton.batch import Batch
from baton.errors import ModelError, WorkerCrashed, WorkerTimeout
from baton.runtime.protocol import pack_frame
from baton.runtime.runners import ONNX, PYTHON, R, Runner
from baton.runtime.worker import Worker, WorkerSpec

HERE = Path(__file__).resolve().parent
#: The project's own environment: it has numpy, pandas, scikit-learn and onnxruntime.
INTERPRETER = Path(sys.executable)
XS = [-1.5, 0.0, 2.0, 1e6]
YS = [2 * x + 1 for x in XS]

AFFINE_MODULE = '''
import json


class Model:
    def load(self, bundle):
        with open("affine.json") as f:
            self.k = json.load(f)

    def predict(self, inputs):
        x = inputs["x"].astype(float)  # a string column cannot: the model raises
        return {"prediction": self.k["a"] * x + self.k["b"]}
'''

AFFINE_R = '''
affine <- function(model, newdata) {
  # a string column is not numeric: the model refuses it
  if (!is.numeric(newdata$x)) stop("x must be numeric, got ", class(newdata$x)[1])
  list(prediction = model$a * newdata$x + model$b)
}
'''


@dataclass(frozen=True)
class Case:
    runner: Runner
    model: dict[str, Any]
    #: The program the runner's script runs with (WorkerSpec.python).
    interpreter: Path = INTERPRETER


def _affine(folder: Path) -> None:
    (folder / "affine.json").write_text(json.dumps({"a": 2.0, "b": 1.0}))


def python_custom(folder: Path) -> Case:
    _affine(folder)
    (folder / "affine.py").write_text(AFFINE_MODULE)
    return Case(PYTHON, {"runner": "python", "entrypoint": "affine:Model",
                         "method": "predict"})


def _fitted() -> Any:
    from sklearn.linear_model import LinearRegression

    x = np.arange(10.0).reshape(-1, 1)
    return LinearRegression().fit(x, 2 * x.ravel() + 1)


def onnx(folder: Path) -> Case:
    from skl2onnx import to_onnx

    graph = to_onnx(_fitted(), np.zeros((1, 1), dtype=np.float64), target_opset=17)
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    return Case(ONNX, {"runner": "onnx", "entrypoint": "builtin:onnx",
                       "artifact": "model.onnx", "method": "predict"})


def r(folder: Path) -> Case:
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.fail("R is not installed (no Rscript on PATH): apt-get install r-base-core")
    subprocess.run([rscript, "--vanilla", "-e", "saveRDS(list(a = 2, b = 1), 'affine.rds')"],
                   cwd=folder, check=True, timeout=60)
    (folder / "affine.R").write_text(AFFINE_R)
    return Case(R, {"runner": "r", "entrypoint": "affine.R:affine", "artifact": "affine.rds",
                    "method": "predict"}, interpreter=Path(rscript))


def doc(folder: Path) -> Case:
    _affine(folder)
    script = HERE / "doc_runner.py"
    return Case(Runner("doc", "written from docs/protocol.md", script),
                {"runner": "doc", "entrypoint": "builtin:affine", "artifact": "affine.json"})


CASES: dict[str, Callable[[Path], Case]] = {
    "python": python_custom, "onnx": onnx, "r": r, "doc": doc}


@pytest.fixture(params=list(CASES))
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> WorkerSpec:
    case = CASES[request.param](tmp_path)
    return WorkerSpec(
        model=f"affine-{request.param}", python=case.interpreter, bundle_dir=tmp_path,
        load={"model": case.model, "kind": "records", "inputs": ["x"], "outputs": ["prediction"],
              "fields": [{"name": "x", "type": "float", "nullable": True}]},
        runner=case.runner, load_timeout=60)


def run(body: Coroutine[Any, Any, None]) -> None:
    """On uvloop, as ``baton serve`` runs: its workers' standard streams are socketpairs,
    not pipes (a runner that opens /dev/stdout by path fails there)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(body, 120))


def batch(values: list[Any]) -> Batch:
    numeric = all(isinstance(v, float) for v in values)
    return Batch({"x": np.asarray(values, dtype=np.float64) if numeric else values},
                 len(values))


def same(got: list[float | None], expected: list[float | None]) -> bool:
    """Equal to 1e-9 (a fitted regression's coefficients are not exactly 2 and 1)."""
    return len(got) == len(expected) and all(
        (g is None and e is None) or (g is not None and e is not None
                                      and math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9))
        for g, e in zip(got, expected, strict=True))


def ys(result: Batch) -> list[float | None]:
    out = []
    for v in list(result.columns["prediction"]):
        v = None if v is None else float(v)
        out.append(None if v is None or math.isnan(v) else v)
    return out


async def started(spec: WorkerSpec) -> Worker:
    worker = Worker(spec, 0)
    await worker.start()
    assert worker.state == "ready", worker.last_output()
    assert worker.info.get("protocol") == 1
    return worker


def test_a_workers_life(spec: WorkerSpec) -> None:
    """Start and load; a good batch; missing values; an empty batch; input the model
    refuses (an answer, and the worker serves on); a ``metrics`` request; an unknown
    message (an ``error``, no death); unload with status 0."""
    async def body() -> None:
        worker = await started(spec)
        try:
            got = await worker.predict(batch(XS), 30)
            assert got.rows == len(XS) and same(ys(got), YS), ys(got)
            got = await worker.predict(batch([1.0, math.nan, 3.0]), 30)
            assert same(ys(got), [3.0, None, 7.0]), ys(got)
            empty = await worker.predict(batch([]), 30)
            assert empty.rows == 0 and ys(empty) == []
            with pytest.raises(ModelError) as refused:
                await worker.predict(batch(["one", "two"]), 30)
            assert refused.value.code == "MODEL_ERROR", refused.value
            assert worker.state == "ready"
            answer = await worker.metrics(["nowhere:metric"], [1.0], [{"prediction": 1.0}],
                                          [{"prediction": 1.0}], 30)
            assert answer["ok"] is True and answer["values"] == {}
            assert "nowhere:metric" in answer["errors"]
            worker._send(pack_frame(b'{"op":"bogus","id":99}'))
            assert same(ys(await worker.predict(batch([0.5]), 30)), [2.0])
        finally:
            await worker.stop(grace=10)
        assert worker.returncode == 0, worker.last_output()
    run(body())


def test_a_crash_in_the_middle_of_a_request_fails_it_and_ends_the_worker(
        spec: WorkerSpec) -> None:
    async def body() -> None:
        worker = await started(spec)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGSTOP)  # the request is in the middle when it dies
        pending = worker.predict(batch([1.0]), 30)
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            await pending
        await asyncio.wait_for(worker.exited.wait(), 30)
        assert worker.state == "dead" and worker.killed_from_outside
    run(body())


def test_a_hang_is_a_timeout_and_the_worker_is_killed(spec: WorkerSpec) -> None:
    async def body() -> None:
        worker = await started(spec)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGSTOP)
        with pytest.raises(WorkerTimeout):
            await worker.predict(batch([1.0]), 1.0)
        await asyncio.wait_for(worker.exited.wait(), 30)
        assert worker.state in ("hung", "dead")
    run(body())
