"""Where a served engine logs its predictions: the registry's database (PostgreSQL here)
instead of the local SQLite file, and a copy of every prediction in a stream sink (a JSON
Lines file, a Redis stream); bad destinations are refused at start."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.conftest import Server, run_baton, write_bundle
from tests.deploy.test_deployment import wait_lines
from tests.monitor.test_feedback import CLASSIFIER, CLASSIFIER_CONTRACT


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("dest") / "sign", name="sign",
                        code=CLASSIFIER, contract=CLASSIFIER_CONTRACT)


def metric(server: Server, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for fam in text_string_to_metric_families(server.client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_an_engine_logs_to_the_registry_database_and_takes_feedback(
        serve: Callable[..., Server], classifier: Path, postgres_url: str,
        tmp_path: Path) -> None:
    server = serve([classifier], env={"BATON_HOME": str(tmp_path / "home"),
                                      "BATON_PREDICTION_LOG_STORE": "registry",
                                      "BATON_REGISTRY_DB": postgres_url})
    assert "prediction log: registry store (postgresql+psycopg://postgres@" in server.output()
    body = server.client.post("/v1/models/sign/predict",
                              json=[{"x": -1.0}, {"x": 2.0}, {"x": 3.0}]).json()
    ids = body["ids"]
    fb = server.client.post("/v1/models/sign/feedback", json=[
        {"id": ids[0], "label": "neg"}, {"id": ids[1], "label": "neg"},
        {"id": ids[2], "label": "pos"}, {"id": "nope-0", "label": "pos"}])
    assert fb.status_code == 200, fb.text
    out = fb.json()
    assert out["accepted"] == 3 and out["unknown"] == ["nope-0"]
    assert out["quality"] == {"accuracy": pytest.approx(2 / 3)}
    again = server.client.post("/v1/models/sign/feedback", json=[{"id": ids[0], "label": "pos"}])
    assert again.json()["duplicates"] == [ids[0]]
    stats = server.client.get("/v1/stats").json()
    where = stats["prediction_log"]
    assert where["store"] == "registry" and where["database"] == postgres_url
    assert where["written"] == 3 and where["export"] is None
    assert metric(server, "baton_prediction_log_written_total") == {(("store", "registry"),): 3}
    # Nothing went to the local file; everything is in PostgreSQL.
    assert not (tmp_path / "home" / "predictions.sqlite").exists()
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            rid = ids[0].rsplit("-", 1)[0]
            rows = conn.execute(text("SELECT model, rows, outputs->'prediction'->>1 FROM "
                                     "prediction_batches WHERE rid = :rid"), {"rid": rid}).all()
            labels = conn.execute(text("SELECT id, label FROM prediction_labels WHERE "
                                       "model = 'sign' ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("sign", 3, "pos")]
    assert sorted(tuple(r) for r in labels) == sorted(
        [(ids[0], '"neg"'), (ids[1], '"neg"'), (ids[2], '"pos"')])


def test_an_engine_copies_every_prediction_to_a_file_sink(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path) -> None:
    sink = tmp_path / "export" / "predictions.jsonl"
    server = serve([classifier], env={"BATON_HOME": str(tmp_path / "home"),
                                      "BATON_PREDICTION_LOG_SINK": f"file://{sink}"})
    first = server.client.post("/v1/models/sign/predict",
                               json=[{"x": -1.5}, {"x": 2.0}]).json()["ids"]
    second = server.client.post("/v2/models/sign/infer", json={"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [4.0]}]}).json()
    ids = [*first, *second["parameters"]["prediction_ids"]]
    # The export thread counts a batch once the sink has taken it, a moment after the lines
    # are in the file: wait for the count (reading the file first raced it on a busy machine).
    export = _wait_export(server, lambda e: e["exported"] >= 3 and e["pending"] == 0)
    assert export == {"sink": f"file://{sink}", "exported": 3, "dropped": 0, "pending": 0,
                      "failures": 0, "last_error": None}
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [x["id"] for x in lines] == ids
    assert [(x["input"], x["output"]) for x in lines] == [
        ({"x": -1.5}, {"prediction": "neg"}), ({"x": 2.0}, {"prediction": "pos"}),
        ({"x": 4.0}, {"prediction": "pos"})]
    assert {(x["model"], x["version"]) for x in lines} == {("sign", "1.0.0")}
    assert all("key" not in x and abs(x["time"] - time.time()) < 120 for x in lines)
    labels = (("sink", f"file://{sink}"),)
    assert metric(server, "baton_prediction_log_exported_total") == {labels: 3}
    assert metric(server, "baton_prediction_log_export_dropped_total") == {labels: 0}
    # The local store still takes feedback for the same ids.
    fb = server.client.post("/v1/models/sign/feedback", json=[{"id": ids[0], "label": "neg"}])
    assert fb.json()["accepted"] == 1
    assert server.stop() == 0
    assert len(sink.read_text().splitlines()) == 3  # nothing more, nothing lost


def test_an_engine_copies_stream_predictions_with_their_keys_to_a_redis_stream(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path) -> None:
    import redis

    stream = f"baton-export-{secrets.token_hex(4)}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"x": x, "customer": c}) + "\n"
        for x, c in ((-1.0, "c1"), (2.0, "c2"), (3.0, "c1"))))
    try:
        server = serve([classifier], "--input", f"file://{tmp_path}/in.jsonl?key=customer",
                       "--output", f"file://{tmp_path}/out.jsonl",
                       "--dead-letter", f"file://{tmp_path}/dead.jsonl",
                       env={"BATON_HOME": str(tmp_path / "home"),
                            "BATON_UNKNOWN_FIELDS": "ignore",
                            "BATON_PREDICTION_LOG_SINK": f"redis://127.0.0.1:6379/{stream}"})
        scored = wait_lines(tmp_path / "out.jsonl", 3)
        ids = server.client.post("/v1/models/sign/predict", json=[{"x": 5.0}]).json()["ids"]
        entries = _wait_entries(client, stream, 4)
        records = [json.loads(fields[b"value"]) for _, fields in entries]
        by_id = {r["id"]: r for r in records}
        assert [fields[b"key"].decode() for _, fields in entries] == [r["id"] for r in records]
        assert set(by_id) == {*(o["id"] for o in scored), *ids}
        for o in scored:
            assert by_id[o["id"]]["key"] == o["key"]
            assert by_id[o["id"]]["output"] == o["output"]
        assert "key" not in by_id[ids[0]] and by_id[ids[0]]["input"] == {"x": 5.0}
        assert server.client.get("/v1/stats").json()["prediction_log"]["export"]["sink"] == \
            f"redis://127.0.0.1:6379/{stream}"
    finally:
        client.delete(stream)
        client.close()


def _wait_export(server: Server, done: Callable[[dict[str, Any]], bool],
                 timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        export = server.client.get("/v1/stats").json()["prediction_log"]["export"]
        if done(export):
            return export
        assert time.monotonic() < deadline, f"prediction export stuck at {export}"
        time.sleep(0.05)


def _wait_entries(client: Any, stream: str, n: int, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = client.xrange(stream)
        if len(entries) >= n:
            return list(entries)
        time.sleep(0.05)
    raise AssertionError(f"redis stream {stream} did not get {n} entries")


@pytest.mark.parametrize(("env", "says"), [
    ({"BATON_PREDICTION_LOG_STORE": "s3"},
     "setting prediction_log_store (BATON_PREDICTION_LOG_STORE) must be 'local' or "
     "'registry', got 's3'"),
    ({"BATON_PREDICTION_LOG_SINK": "ftp://example.com/x"},
     "setting prediction_log_sink (BATON_PREDICTION_LOG_SINK) must be a stream URL"),
    ({"BATON_PREDICTION_LOG_SINK": "redis://user:hunter2@127.0.0.1:6379"},
     "got 'redis://user:***@127.0.0.1:6379': it names no file, stream, topic or queue"),
    ({"BATON_PREDICTION_LOG_STORE": "registry", "BATON_REGISTRY_DB": "mysql://u@h/db"},
     "needs registry_db (BATON_REGISTRY_DB) to be a SQLite or PostgreSQL URL"),
])
def test_a_bad_destination_stops_serve_with_a_settings_error(
        classifier: Path, baton_env: dict[str, str], env: dict[str, str], says: str) -> None:
    result = run_baton("serve", classifier, "--port", "0", env={**baton_env, **env},
                       timeout=60)
    assert result.returncode == 2, result.stderr
    assert "error [INVALID_SETTING]" in result.stderr and says in result.stderr
    assert "hunter2" not in result.stderr


def test_an_unreachable_registry_database_stops_serve(
        classifier: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:5432/baton_no_such_database"
    result = run_baton("serve", classifier, "--port", "0", env={
        **baton_env, "BATON_PREDICTION_LOG_STORE": "registry", "BATON_REGISTRY_DB": url},
        timeout=120)
    assert result.returncode == 1, result.stderr
    assert "error [PREDICTION_LOG_UNAVAILABLE]" in result.stderr
    assert "baton_no_such_database" in result.stderr and "hunter2" not in result.stderr
