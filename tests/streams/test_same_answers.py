"""Every broker connector gives a record the same verdict and answer as ``/v1``: the
differential test of tests/test_paths.py (which covers ``file://``), down Redis, NATS,
RabbitMQ, MQTT and Kafka, with the generated records (nulls in every nullable field, edge
values, every category, broken records) published as an outside producer would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.differential import Packaged, package_all, sample_records
from tests.streams.brokers import Tansu
from tests.streams.conftest import BROKERS, Aio, make_kit
from tests.streams.engines import Outcome
from tests.streams.kits import suffix
from tests.test_paths import Verdict, _agree, via_v1

MODEL = "native"  # categories read natively: the model the old bug broke


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    return package_all(tmp_path_factory.mktemp("same-answers"), only=[MODEL])[MODEL]


@pytest.mark.parametrize("scheme", BROKERS)
def test_every_broker_gives_each_record_the_same_verdict_and_answer_as_v1(
        scheme: str, packaged: Packaged, baton_env: dict[str, str], tmp_path: Path,
        tansu: Tansu, aio: Aio) -> None:
    kit = make_kit(scheme, tmp_path, tansu)
    streams = (kit.fresh(), kit.fresh(), kit.fresh())
    group = f"same-{suffix()}"
    records = sample_records(packaged.fields, 40, seed=11)
    aio.run(kit.prepare(kit.url(streams[0]), group))
    outcome = Outcome(aio, kit, streams[1], streams[2]).start()
    server = Server([packaged.path], baton_env,
                    ["--input", kit.url(streams[0]), "--output", kit.url(streams[1]),
                     "--dead-letter", kit.url(streams[2]), "--group", group])
    try:
        server.wait_ready(timeout=600)
        aio.run(kit.publish(streams[0], [(f"k{i:03d}", json.dumps(r).encode())
                                         for i, r in enumerate(records)]))
        deadline = time.monotonic() + 120
        while len(outcome.seen()) < len(records):
            assert time.monotonic() < deadline, (
                f"{scheme}: {len(outcome.seen())} of {len(records)} records answered in 120 s"
                f"\n{server.output()[-3000:]}")
            time.sleep(0.1)
        out, dead = outcome.poll()
        v1 = via_v1(server, MODEL, records)  # the same engine, over HTTP
    finally:
        server.stop()
        aio.run(outcome.close())
        aio.run(kit.cleanup())
    got: dict[str, Verdict] = {o["key"]: ("ok", o["output"]) for o in out}
    got.update({d["key"]: ("rejected", d["violations"][0]["field"]) for d in dead})
    assert len(out) + len(dead) == len(records), "a record answered twice"
    verdicts = [got[f"k{i:03d}"] for i in range(len(records))]
    assert any(v[0] == "rejected" for v in v1), "the set holds broken records"
    differ = _agree(v1, verdicts)
    assert not differ, (f"{scheme} differs from /v1 on " + "; ".join(
        f"{records[i]}: v1 {v1[i]}, {scheme} {verdicts[i]}" for i in differ[:3]))
