"""The labels stream: true values read from a broker, joined to logged predictions.

A real engine scores records from a file stream, then reads labels (by prediction id and
by record key) from each broker; accuracy, Prometheus and the dead letters are checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from baton.streams.base import open_source, redact_url
from tests.conftest import Server, free_port, run_baton, write_bundle
from tests.deploy.test_deployment import wait_lines
from tests.monitor.test_feedback import CLASSIFIER
from tests.monitor.test_feedback import CLASSIFIER_CONTRACT as CONTRACT
from tests.streams.brokers import Tansu
from tests.streams.conftest import SCHEMES, Aio, make_kit
from tests.streams.kits import Item, Kit

GROUP = "baton-sign-labels"  # the labels binding's default consumer group


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("labels") / "sign", name="sign",
                        code=CLASSIFIER, contract=CONTRACT)


def score_from_file(serve: Callable[..., Server], classifier: Path, tmp_path: Path,
                    labels_url: str, xs: list[float], customers: list[str],
                    *extra: str) -> tuple[Server, list[dict[str, Any]]]:
    """Serve the classifier with a file input and a labels stream; wait for the scores."""
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"x": x, "customer": c}) + "\n" for x, c in zip(xs, customers,
                                                                  strict=True)))
    server = serve([classifier], "--input", f"file://{tmp_path}/in.jsonl?key=customer",
                   "--output", f"file://{tmp_path}/out.jsonl",
                   "--dead-letter", f"file://{tmp_path}/dead.jsonl",
                   "--labels", labels_url, *extra,
                   env={"BATON_HOME": str(tmp_path / "home"),
                        "BATON_UNKNOWN_FIELDS": "ignore"})  # "customer" is the key
    return server, wait_lines(tmp_path / "out.jsonl", len(xs))


def labels_binding(server: Server) -> dict[str, Any]:
    [labels] = [s for s in server.client.get("/v1/models").json()["streams"]
                if s["kind"] == "labels"]
    return labels


def wait_consumed(server: Server, n: int, timeout: float = 150) -> dict[str, Any]:
    """Until the labels binding consumed ``n``. Kafka's labels consumer joins a group first
    (about 23 s on the test broker when the machine is quiet; a run with the cores loaded
    saw none consumed after 60 s), hence the long bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        binding = labels_binding(server)
        if binding["consumed"] >= n:
            return binding
        time.sleep(0.05)
    raise AssertionError(f"the labels stream consumed {labels_binding(server)} after "
                         f"{timeout}s, not {n}\n{server.output()[-3000:]}")


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(server.client.get("/metrics").text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def prepare(url: str) -> None:
    """Make the labels stream exist for the binding's group before anything is published
    (an MQTT session gets only what comes after it subscribed; a Kafka topic the producer
    would create could have several partitions, and so no order between keys)."""
    # Kafka: another group, or the binding's first join waits out the member made here
    # (Tansu holds the group's rebalance for it; a full run on loaded cores saw none of 8
    # labels consumed after 150 s)
    source = open_source(url, group=GROUP + "-prepare" if url.startswith("kafka") else GROUP)
    await source.open()
    await source.close()


def label(pid: str | None, value: Any, key: str | None = None) -> Item:
    """A label message: by prediction id in the body, or (no id) by the message key. The
    key is in the body too, where the file connector reads it (``?key=key``)."""
    body: dict[str, Any] = {"label": value}
    if pid is not None:
        body["id"] = pid
    if key is not None:
        body["key"] = key
    return key, json.dumps(body).encode()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_labels_from_a_stream_set_quality_and_bad_ones_are_dead_lettered(
        scheme: str, serve: Callable[..., Server], classifier: Path, tmp_path: Path,
        tansu: Tansu, aio: Aio) -> None:
    kit: Kit = make_kit(scheme, tmp_path, tansu)
    try:
        stream = kit.fresh()
        url = kit.url(stream)
        aio.run(prepare(url))
        server, out = score_from_file(serve, classifier, tmp_path, url,
                                      [-1.0, 2.0, 3.0, -4.0], ["c1", "c1", "c2", "c2"])
        ids = [o["id"] for o in out]
        assert [o["output"]["prediction"] for o in out] == ["neg", "pos", "pos", "neg"]
        sent = [
            label(ids[0], "neg"),                   # right
            label(None, "neg", key="c1"),           # c1's latest prediction, ids[1]: wrong
            (None, b"not json"),                    # INVALID_JSON
            label(ids[2], 3),                       # LABEL_INVALID: not a string
            label("nope-0", "pos"),                 # UNKNOWN_PREDICTION
            label(ids[0], "pos"),                   # DUPLICATE_LABEL: the first one stays
            label(None, "neg", key="c2"),           # c2's latest prediction, ids[3]: right
            label(ids[2], "pos"),                   # right, after the bad ones
        ]
        aio.run(kit.publish(stream, sent))
        binding = wait_consumed(server, len(sent))
        assert binding["labels"] == {"accepted": 4, "unknown": 1, "duplicate": 1,
                                     "invalid": 2, "unavailable": 0}
        assert (binding["model"], binding["input"], binding["output"], binding["group"],
                binding["produced"], binding["dead_lettered"]) == (
            "sign", redact_url(url), None, GROUP, 0, 4)

        model = server.client.get("/v1/stats").json()["models"][0]
        quality = model["metrics"]["quality"]
        assert quality["labelled"] == 4 and quality["accuracy"] == pytest.approx(3 / 4)
        assert model["metrics"]["errors"] == 0  # bad labels are not the model's errors
        [labels_stats] = [s for s in server.client.get("/v1/stats").json()["streams"]
                          if s["kind"] == "labels"]
        assert labels_stats["labels"]["accepted"] == 4

        metrics = scrape(server)
        assert metrics[("baton_quality", (("metric", "accuracy"), ("model", "sign"),
                                          ("version", "1.0.0")))] == pytest.approx(3 / 4)
        where = (("input", redact_url(url)), ("model", "sign"))
        for result, n in (("accepted", 4), ("unknown", 1), ("duplicate", 1),
                          ("invalid", 2)):
            assert metrics[("baton_stream_labels_total",
                            (*where[:1], *where[1:], ("result", result)))] == n
        assert metrics[("baton_stream_consumed_total", where)] == 8
        assert metrics[("baton_stream_dead_lettered_total", where)] == 4

        dead = wait_lines(tmp_path / "dead.jsonl", 4)
        assert [(d["stage"], d["code"]) for d in dead] == [
            ("labels", "INVALID_JSON"), ("labels", "LABEL_INVALID"),
            ("labels", "UNKNOWN_PREDICTION"), ("labels", "DUPLICATE_LABEL")]
        assert [d["payload"].encode() for d in dead] == [sent[i][1] for i in (2, 3, 4, 5)]
        assert dead[1]["violations"][0]["expected"] == "string"
        assert "nope-0" in dead[2]["message"] and dead[3]["model"] == "sign"
        assert server.stop() == 0
    finally:
        aio.run(kit.cleanup())


def test_labels_stream_alone_by_deployment_file_resumes_after_a_restart(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path, tansu: Tansu,
        aio: Aio) -> None:
    """[deployments.labels] without a scoring stream: HTTP predictions, labels from Redis,
    micro-batches of 2. HTTP feedback and the stream share the log; acknowledged labels are
    not read again after a restart."""
    kit = make_kit("redis", tmp_path, tansu)
    try:
        stream = kit.fresh()
        url = kit.url(stream)
        deploy = tmp_path / "deploy.toml"
        deploy.write_text(f'''
[[deployments]]
bundle = "{classifier}"

[deployments.labels]
input = "{url}"
dead_letter = "file://{tmp_path}/dead.jsonl"
group = "sign-truth"
max_batch = 2
''')
        env = {"BATON_HOME": str(tmp_path / "home")}
        server = serve([], "--deployment", str(deploy), env=env)
        ids = server.client.post("/v1/models/sign/predict", json=[
            {"x": 1.0}, {"x": -2.0}, {"x": 3.0}, {"x": -4.0}, {"x": 5.0}]).json()["ids"]
        aio.run(kit.publish(stream, [label(ids[0], "pos"), label(ids[1], "pos"),
                                     label("0123456789abcdef-0", "pos")]))
        binding = wait_consumed(server, 3)
        assert binding["group"] == "sign-truth" and binding["batches"] >= 2  # max_batch 2
        assert binding["labels"]["accepted"] == 2 and binding["labels"]["unknown"] == 1
        assert [s["kind"] for s in server.client.get("/v1/models").json()["streams"]] == \
            ["labels"]
        quality = server.client.get("/v1/stats").json()["models"][0]["metrics"]["quality"]
        assert quality["accuracy"] == pytest.approx(0.5)
        fb = server.client.post("/v1/models/sign/feedback",
                                json=[{"id": ids[0], "label": "neg"},
                                      {"id": ids[2], "label": "pos"}]).json()
        assert fb["duplicates"] == [ids[0]] and fb["accepted"] == 1
        assert fb["quality"]["accuracy"] == pytest.approx(2 / 3)
        assert server.stop() == 0

        # Sent while the engine is down, so they are read in full batches of 2 after it.
        aio.run(kit.publish(stream, [label(ids[3], "neg"), label(ids[4], "pos"),
                                     label(ids[2], "neg")]))  # HTTP labelled ids[2] already
        server = serve([], "--deployment", str(deploy), env=env)
        wait_consumed(server, 3)
        # Nothing came again: anything delivered again would come before a label published
        # now (the stream's order), so once that one is done every count is final.
        aio.run(kit.publish(stream, [label("f0f0f0f0f0f0f0f0-0", "pos")]))
        dead = wait_lines(tmp_path / "dead.jsonl", 3)
        binding = wait_consumed(server, 4)
        assert binding["consumed"] == 4 and binding["batches"] == 3
        assert (binding["labels"]["accepted"], binding["labels"]["duplicate"],
                binding["labels"]["unknown"]) == (2, 1, 1)
        assert [d["code"] for d in dead] == ["UNKNOWN_PREDICTION", "DUPLICATE_LABEL",
                                             "UNKNOWN_PREDICTION"]
        assert "f0f0f0f0f0f0f0f0-0" in dead[2]["message"]
        quality = server.client.get("/v1/stats").json()["models"][0]["metrics"]["quality"]
        # One quality update for the batch of two labels, none for the duplicate's batch.
        assert [h["labelled"] for h in quality["history"]] == [5]
        assert quality["accuracy"] == pytest.approx(4 / 5)
    finally:
        aio.run(kit.cleanup())


def test_a_label_before_its_prediction_is_unknown_and_replay_attaches_it_later(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path, tansu: Tansu,
        aio: Aio, baton_env: dict[str, str]) -> None:
    kit = make_kit("redis", tmp_path, tansu)
    try:
        stream = kit.fresh()
        url = kit.url(stream)
        server, out = score_from_file(serve, classifier, tmp_path, url, [1.0], ["c1"])
        aio.run(kit.publish(stream, [label(None, "neg", key="late")]))  # no "late" yet
        wait_consumed(server, 1)
        [dead] = wait_lines(tmp_path / "dead.jsonl", 1)
        assert (dead["code"], dead["key"]) == ("UNKNOWN_PREDICTION", "late")

        with (tmp_path / "in.jsonl").open("a") as f:
            f.write(json.dumps({"x": -5.0, "customer": "late"}) + "\n")
        assert wait_lines(tmp_path / "out.jsonl", 2)[1]["key"] == "late"
        r = run_baton("replay", "--dead-letter", f"file://{tmp_path}/dead.jsonl", "--to", url,
                      "--stage", "labels", env=baton_env)
        assert r.returncode == 0, r.stderr
        assert "replayed 1 dead letter(s)" in r.stdout and "labels: 1" in r.stdout
        binding = wait_consumed(server, 2)
        assert binding["labels"]["accepted"] == 1
        quality = server.client.get("/v1/stats").json()["models"][0]["metrics"]["quality"]
        assert quality["labelled"] == 1 and quality["accuracy"] == 1.0
    finally:
        aio.run(kit.cleanup())


@pytest.mark.parametrize(("args", "env", "code", "message"), [
    (["--labels", "redis://127.0.0.1:6379/l"], {}, 2,
     "[INVALID_SETTING]: a labels binding needs --dead-letter"),
    (["--labels", "foo://x/y", "--dead-letter", "file:///tmp/d.jsonl"], {}, 8,
     "[UNKNOWN_SCHEME]: unknown stream scheme in 'foo://x/y'"),
    (["--labels", "redis://127.0.0.1:6379/l", "--dead-letter", "file:///tmp/d.jsonl"],
     {"BATON_PREDICTION_LOG_SAMPLE": "0"}, 2, "need the prediction log, which is off"),
    (["--labels", "redis://127.0.0.1:6379/l", "--dead-letter", "file:///tmp/d.jsonl",
      "--input", "redis://127.0.0.1:6379/i"], {}, 2, "missing --output"),
])
def test_a_labels_binding_is_checked_before_anything_starts(
        classifier: Path, baton_env: dict[str, str], args: list[str], env: dict[str, str],
        code: int, message: str) -> None:
    r = run_baton("serve", classifier, "--port", str(free_port()), *args,
                  env={**baton_env, **env})
    assert r.returncode == code, r.stderr
    assert message in r.stderr
