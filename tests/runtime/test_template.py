"""Workers forked from a template (docs/protocol.md#worker-templates).

The conformance suite's life, crash and hang, through a worker a template forked (the
Python and ONNX runners); a crash of its own told apart from a kill from outside; a pool
that restarts a killed worker from its template at once; a template that dies (its workers
serve on, the next worker comes from a new one) or cannot import the model (the worker is
spawned and says why); fresh random state in each worker; and nothing left running after
the pool closes or after its engine is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from baton.errors import ModelError, ModelLoadError, WorkerCrashed, WorkerTimeout
from baton.runtime.pool import WorkerPool
from baton.runtime.runners import PYTHON
from baton.runtime.spec import WorkerSpec
from baton.runtime.template import Template
from baton.runtime.worker import Worker
from tests.runtime.test_runner_conformance import CASES, XS, YS, batch, run, same, ys

CHAOS = '''
import gc
import os
import time

import numpy as np

IMPORTED_WITH_GC = gc.isenabled()


class Model:
    def predict(self, inputs):
        x = float(inputs["x"][0]) if len(inputs["x"]) else 0.0
        if x == 3.0:
            os._exit(3)
        if x == 6.0:
            os.abort()
        if x == 9.0:
            time.sleep(60)
        if x == 12.0:  # numpy's own random state, which a fork would copy
            return {"prediction": np.random.random(len(inputs["x"]))}
        if x == 15.0:
            return {"prediction": [float(os.getpid())]}
        if x == 18.0:  # two rows: the collector when the template imported this, and now
            return {"prediction": [float(IMPORTED_WITH_GC), float(gc.isenabled())]}
        return {"prediction": 2 * inputs["x"].astype(float) + 1}
'''


def make_spec(folder: Path, case: str = "python", **kw: Any) -> WorkerSpec:
    c = CASES[case](folder)
    return WorkerSpec(
        model=f"affine-{case}", python=c.interpreter, bundle_dir=folder,
        load={"model": c.model, "kind": "records", "inputs": ["x"], "outputs": ["prediction"],
              "fields": [{"name": "x", "type": "float", "nullable": True}]},
        runner=c.runner, load_timeout=60, **kw)


def chaos_spec(folder: Path, module: str = CHAOS) -> WorkerSpec:
    (folder / "chaos.py").write_text(module)
    return WorkerSpec(
        model="chaos", python=Path(sys.executable), bundle_dir=folder,
        load={"model": {"runner": "python", "entrypoint": "chaos:Model", "method": "predict"},
              "kind": "records", "inputs": ["x"], "outputs": ["prediction"],
              "fields": [{"name": "x", "type": "float", "nullable": True}]},
        runner=PYTHON, load_timeout=60)


async def forked(spec: WorkerSpec, slot: int = 0,
                 template: Template | None = None) -> tuple[Template, Worker]:
    if template is None:
        template = Template(spec)
        template.spawn()
    worker = Worker(spec, slot, template)
    await worker.start()
    assert worker.state == "ready", worker.last_output
    assert worker.template is template, "spawned, not forked"
    assert worker.pid is not None and template.pid is not None
    assert psutil.Process(worker.pid).ppid() == template.pid
    assert os.getsid(worker.pid) == worker.pid  # a session (and process group) of its own
    return template, worker


def alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def gone(*pids: int | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", ["python", "onnx"])
def test_a_forked_workers_life(tmp_path: Path, case: str) -> None:
    """The conformance suite's life through a forked worker: a batch, missing values, an
    empty batch, input the model refuses, metrics, unload with status 0."""
    spec = make_spec(tmp_path, case)

    async def body() -> None:
        template, worker = await forked(spec)
        try:
            assert same(ys(await worker.predict(batch(XS), 30)), YS)
            assert same(ys(await worker.predict(batch([1.0, float("nan")]), 30)), [3.0, None])
            assert (await worker.predict(batch([]), 30)).rows == 0
            with pytest.raises(ModelError):
                await worker.predict(batch(["one", "two"]), 30)
            answer = await worker.metrics(["nowhere:metric"], [1.0], [1.0], [{}], 30)
            assert answer["ok"] is True and "nowhere:metric" in answer["errors"]
            assert worker.memory() > 0
        finally:
            await worker.stop(grace=10)
            await template.close()
        assert worker.returncode == 0, worker.last_output
        assert template.describe()["state"] == "dead"
        await gone(worker.pid, template.pid)
    run(body())


def test_a_crash_of_its_own_is_told_apart_from_a_kill_from_outside(tmp_path: Path) -> None:
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        template = Template(spec)
        template.spawn()
        try:
            for x, code, outside in [(3.0, 3, False), (6.0, -signal.SIGABRT, False),
                                     (None, -signal.SIGKILL, True)]:
                _, worker = await forked(spec, template=template)
                assert worker.pid is not None
                if x is None:
                    os.kill(worker.pid, signal.SIGSTOP)  # in the middle of the request
                    pending = worker.predict(batch([1.0]), 30)
                    os.kill(worker.pid, signal.SIGKILL)
                else:
                    pending = worker.predict(batch([x]), 30)
                with pytest.raises(WorkerCrashed) as crashed:
                    await pending
                await asyncio.wait_for(worker.exited.wait(), 30)
                assert worker.returncode == code, (x, worker.exit_reason)
                assert worker.killed_from_outside is outside
                assert str(worker.pid) in str(crashed.value)
        finally:
            await template.close()
    run(body())


def test_a_hang_is_a_timeout_and_the_forked_worker_is_killed(tmp_path: Path) -> None:
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        template, worker = await forked(spec)
        try:
            with pytest.raises(WorkerTimeout):
                await worker.predict(batch([9.0]), 1.0)
            await asyncio.wait_for(worker.exited.wait(), 30)
            assert worker.state == "dead" and worker.returncode == -signal.SIGKILL
            assert "hung" in worker.exit_reason
            assert template.state == "ready"  # the template serves on
        finally:
            await template.close()
    run(body())


def test_the_template_imports_without_the_collector_and_its_workers_collect(
        tmp_path: Path) -> None:
    """The template imports the model's modules with the cyclic collector off (its passes
    over the growing heap of modules are pure cost there); the workers it forks have it on."""
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        template, worker = await forked(spec)
        try:
            assert ys(await worker.predict(batch([18.0, 18.0]), 30)) == [0.0, 1.0]
        finally:
            await worker.stop(grace=10)
            await template.close()
    run(body())


def test_a_pool_forks_its_workers_and_restarts_a_killed_one_at_once(tmp_path: Path) -> None:
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        pool = WorkerPool(spec, workers=2, timeout=30)
        pool.template.prewarm()
        await pool.start()
        try:
            template = pool.describe()["template"]
            assert template["state"] == "ready" and template["forked"] == 2
            victim = pool.workers[0]
            assert victim is not None and victim.pid is not None
            killed = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            while not (pool.workers[0] is not victim and pool.workers[0] is not None
                       and pool.workers[0].state == "ready"):
                await asyncio.sleep(0.01)
            assert time.monotonic() - killed < 10
            assert pool.describe()["template"]["forked"] == 3
            assert pool.describe()["restarts"] == 1
            # each forked worker draws its own random numbers
            a, b = (await asyncio.gather(*(w.predict(batch([12.0]), 30) for w in pool.workers
                                           if w is not None)))
            assert ys(a) != ys(b)
        finally:
            await pool.close(5)
        await gone(*(w.pid for w in pool.workers if w), template["pid"])
    run(body())


def test_when_the_template_dies_its_workers_serve_on_and_the_next_comes_from_a_new_one(
        tmp_path: Path) -> None:
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        pool = WorkerPool(spec, workers=1, timeout=30, restart_wait=60)
        pool.template.prewarm()
        await pool.start()
        try:
            first = pool.describe()["template"]["pid"]
            os.kill(first, signal.SIGKILL)
            while pool.describe()["template"]["state"] != "dead":
                await asyncio.sleep(0.01)
            worker = pool.workers[0]
            assert worker is not None and worker.state == "ready"
            assert same(ys(await pool.predict(batch([1.0]))), [3.0])  # it serves on
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)  # its exit status is lost with its template
            await asyncio.wait_for(worker.exited.wait(), 30)
            assert worker.returncode is None and "template" in worker.exit_reason
            assert same(ys(await pool.predict(batch([2.0]))), [5.0])  # waited for a restart
            new = pool.workers[0]
            assert new is not None and new.template is not None
            assert new.template.pid not in (None, first)
            assert pool.describe()["template"]["forked"] == 1
        finally:
            await pool.close(5)
    run(body())


def test_a_template_that_cannot_import_the_model_leaves_the_worker_to_say_why(
        tmp_path: Path) -> None:
    spec = chaos_spec(tmp_path, "import not_a_module_anywhere\n")

    async def body() -> None:
        pool = WorkerPool(spec, workers=1, timeout=30)
        pool.template.prewarm()
        try:
            with pytest.raises(ModelLoadError) as failed:
                await pool.start()
            assert failed.value.details["stage"] == "import"
            assert "not_a_module_anywhere" in str(failed.value)
            assert pool.describe()["template"]["state"] == "dead"
            assert pool.template.current is not None and pool.template.current.warm_failed
            while pool.template.enabled:  # the retry finds it so: spawned from now on
                await asyncio.sleep(0.01)
        finally:
            await pool.close(5)
    run(body())


def test_a_job_spawns_its_first_worker_and_forks_the_ones_that_replace_it(
        tmp_path: Path) -> None:
    """Without prewarm() (baton score, baton check: one start, rarely a restart) the first
    worker is spawned as before; a restart starts the template and forks from it."""
    spec = chaos_spec(tmp_path)

    async def body() -> None:
        pool = WorkerPool(spec, workers=1, timeout=30, restart_wait=60)
        await pool.start()
        try:
            first = pool.workers[0]
            assert first is not None and first.template is None
            assert pool.describe()["template"] is None
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            assert same(ys(await pool.predict(batch([1.0]))), [3.0])
            again = pool.workers[0]
            assert again is not None and again is not first and again.template is not None
            assert pool.describe()["template"]["forked"] == 1
        finally:
            await pool.close(5)
    run(body())


def test_without_the_setting_workers_are_spawned(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, template=False)

    async def body() -> None:
        pool = WorkerPool(spec, workers=1, timeout=30)
        pool.template.prewarm()
        await pool.start()
        try:
            worker = pool.workers[0]
            assert worker is not None and worker.template is None
            assert pool.describe()["template"] is None
            assert psutil.Process(worker.pid).ppid() == os.getpid()
        finally:
            await pool.close(5)
    run(body())


@pytest.mark.parametrize("forks", [False, True], ids=["spawned", "forked"])
@pytest.mark.parametrize("turns", [1, 2, 3, 5, 8])
def test_a_start_cancelled_while_its_process_launches_kills_it(
        tmp_path: Path, forks: bool, turns: int) -> None:
    """A pool closing cancels a restart wherever it is; cancelled while the process was
    being launched, the start still kills what the launch started and sees it exit (it
    leaked a transport that outlived the loop: tests/runtime/test_template.py, CI)."""
    spec = make_spec(tmp_path)

    async def body() -> None:
        template = Template(spec) if forks else None
        if template is not None:
            template.spawn()
        worker = Worker(spec, 0, template)
        try:
            starting = asyncio.ensure_future(worker.start())
            for _ in range(turns):  # a few turns of the loop: the launch under way
                await asyncio.sleep(0)
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            if worker.pid is not None:  # the launch started a process: it is gone
                assert worker.exited.is_set(), worker.last_output
                await gone(worker.pid)
        finally:
            if template is not None:
                await template.close()
    run(body())


ENGINE = '''
import asyncio, json, sys
from pathlib import Path
from baton.runtime.pool import WorkerPool
from baton.runtime.runners import PYTHON
from baton.runtime.spec import WorkerSpec

async def main():
    spec = WorkerSpec(model="chaos", python=Path(sys.executable), bundle_dir=Path(sys.argv[1]),
                      load=json.loads(sys.argv[2]), runner=PYTHON, load_timeout=60)
    pool = WorkerPool(spec, workers=2, timeout=30)
    pool.template.prewarm()
    await pool.start()
    print(json.dumps([pool.template.current.pid, *(w.pid for w in pool.workers)]), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
'''


def test_nothing_outlives_an_engine_that_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the engine: its template sees the socket close and kills its workers,
    which would also have seen their standard input close."""
    spec = chaos_spec(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(tmp_path), json.dumps(spec.load)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 3 and all(alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        run(gone(*pids))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
