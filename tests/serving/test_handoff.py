"""A version hand-off: what the successor scores carries the successor's version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from baton.bundle.loader import open_bundle
from baton.env.builder import EnvBuilder
from baton.monitor.predlog import PredictionLog
from baton.serving.service import ModelService
from baton.settings import Settings
from baton.streams.base import Message
from baton.streams.binding import StreamBinding
from baton.streams.pipeline import StreamPipeline
from tests.conftest import records_contract, write_bundle

# x == -1 holds the worker until the test creates RELEASE next to the bundle's files.
CODE = '''
import os, time

class Model:
    def predict(self, inputs):
        for x in inputs["x"]:
            while x == -1 and not os.path.exists("RELEASE"):
                time.sleep(0.01)
        return {{"y": [x * {factor} for x in inputs["x"]], "v": ["{version}"] * len(inputs["x"])}}
'''


def version_bundle(root: Path, version: str, factor: float) -> Path:
    path = write_bundle(root / f"scorer-{version}", name="scorer",
                        code=CODE.format(factor=factor, version=version),
                        contract=records_contract(inputs={"x": "float"},
                                                  outputs={"y": "float", "v": "string"}))
    manifest = path / "baton.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"',
                                                     f'version = "{version}"'))
    return path


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.01)


def two_versions(baton_home: Path, tmp_path: Path) -> tuple[ModelService, ModelService, Path]:
    """Services of scorer 1.0.0 and 2.0.0 (not started), and 1.0.0's folder."""
    settings = Settings(home=baton_home, workers=1)
    builder = EnvBuilder(settings.envs_dir)
    old_dir, new_dir = version_bundle(tmp_path, "1.0.0", 2.0), version_bundle(tmp_path,
                                                                              "2.0.0", 3.0)
    services = []
    for path in (old_dir, new_dir):
        bundle = open_bundle(path, settings.bundles_dir)
        services.append(ModelService(bundle, builder.ensure(bundle.manifest.environment),
                                     settings))
    return services[0], services[1], old_dir


def test_a_request_scored_by_the_successor_carries_the_successors_version(
        baton_home: Path, tmp_path: Path) -> None:
    old, new, old_dir = two_versions(baton_home, tmp_path)
    predlog = PredictionLog(tmp_path / "predictions.sqlite")

    async def run() -> None:
        predlog.open()
        for svc in (old, new):
            svc.instrument(None, predlog)
            await svc.pool.start()
        try:
            held = asyncio.create_task(old.predict_records(b'[{"x": -1}]'))
            await wait_for(lambda: old.pool.in_flight == 1, "the held request in flight")
            old.successor = new  # what Engine.replace does: then the old version drains
            closing = asyncio.create_task(old.close(60))
            await wait_for(lambda: old.pool.closing, "the old version closing")

            answer = orjson.loads(await old.predict_records(b'[{"x": 2}]'))
            assert answer["model_version"] == "2.0.0"
            assert answer["predictions"] == [{"y": 6.0, "v": "2.0.0"}]

            (old_dir / "RELEASE").write_text("")
            held_answer = orjson.loads(await held)  # it was queued there: the old one's
            assert held_answer["model_version"] == "1.0.0"
            await closing

            # The prediction log keeps each under the version that scored it: a label for
            # the hand-off's answer counts for 2.0.0's quality, never for 1.0.0's.
            await predlog.flush()
            [pid], [held_id] = answer["ids"], held_answer["ids"]
            result = predlog.add_labels("scorer", [(pid, 6.0), (held_id, -2.0)])
            assert len(result.accepted) == 2
            assert [t for _, t in predlog.labelled("scorer", "2.0.0", 10)] == [6.0]
            assert [t for _, t in predlog.labelled("scorer", "1.0.0", 10)] == [-2.0]
        finally:
            await asyncio.gather(old.close(5), new.close(5))
            predlog.close()

    asyncio.run(run())


def test_a_stream_record_scored_by_the_successor_carries_the_successors_version(
        baton_home: Path, tmp_path: Path) -> None:
    """The stream path looks its model version up before scoring: a hand-off in between must
    not label the successor's answer (and its logged prediction) with the old version."""
    old, new, old_dir = two_versions(baton_home, tmp_path)
    predlog = PredictionLog(tmp_path / "predictions.sqlite")
    binding = StreamBinding(model="scorer", input="file://in", output="file://out",
                            dead_letter="file://dead")

    async def run() -> None:
        predlog.open()
        for svc in (old, new):
            svc.instrument(None, predlog)
            await svc.pool.start()
        pipeline = StreamPipeline(binding, lambda: old)  # the engine still names 1.0.0
        try:
            held = asyncio.create_task(old.predict_records(b'[{"x": -1}]'))
            await wait_for(lambda: old.pool.in_flight == 1, "the held request in flight")
            old.successor = new
            closing = asyncio.create_task(old.close(60))
            await wait_for(lambda: old.pool.closing, "the old version closing")

            scorer, outputs, dead = await pipeline._score([Message("k", b'{"x": 2}')])
            assert dead == [] and scorer is new
            [record] = [orjson.loads(o.value) for o in outputs]
            assert record["version"] == "2.0.0"
            assert record["output"] == {"y": 6.0, "v": "2.0.0"}

            (old_dir / "RELEASE").write_text("")
            await held
            await closing
            await predlog.flush()
            result = predlog.add_labels("scorer", [(record["id"], 6.0)])
            assert len(result.accepted) == 1
            assert [t for _, t in predlog.labelled("scorer", "2.0.0", 10)] == [6.0]
            assert predlog.labelled("scorer", "1.0.0", 10) == []
        finally:
            await asyncio.gather(old.close(5), new.close(5))
            predlog.close()

    asyncio.run(run())
