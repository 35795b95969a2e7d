"""Prediction ids, the prediction log, ground truth feedback and quality metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, records_contract, write_bundle

CLASSIFIER = '''
class Model:
    def predict(self, inputs):
        return {"prediction": ["neg" if x < 0 else "pos" for x in inputs["x"]]}
'''
CLASSIFIER_CONTRACT = records_contract(
    inputs={"x": "float"},
    outputs={"prediction": {"type": "string", "categories": ["neg", "pos"]}})


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("fb") / "sign", name="sign", code=CLASSIFIER,
                        contract=CLASSIFIER_CONTRACT)


def quality_metric(server: Server, metric: str) -> float:
    for fam in text_string_to_metric_families(server.client.get("/metrics").text):
        for s in fam.samples:
            if s.name == "baton_quality" and s.labels.get("metric") == metric:
                return s.value
    raise AssertionError(f"no baton_quality{{metric={metric!r}}}")


def test_accuracy_from_feedback_joined_to_logged_predictions(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path) -> None:
    server = serve([classifier], env={"BATON_HOME": str(tmp_path / "home")})
    resp = server.client.post("/v1/models/sign/predict",
                              json=[{"x": -1.0}, {"x": 2.0}, {"x": 3.0}, {"x": -4.0}])
    body = resp.json()
    ids = body["ids"]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert [p["prediction"] for p in body["predictions"]] == ["neg", "pos", "pos", "neg"]
    labels = [{"id": ids[0], "label": "neg"}, {"id": ids[1], "label": "pos"},
              {"id": ids[2], "label": "neg"}, {"id": "nope-0", "label": "pos"}]
    fb = server.client.post("/v1/models/sign/feedback", json=labels)
    assert fb.status_code == 200, fb.text
    out = fb.json()
    assert out["accepted"] == 3 and out["unknown"] == ["nope-0"] and out["duplicates"] == []
    assert out["quality"] == {"accuracy": pytest.approx(2 / 3)} and out["labelled"] == 3
    assert quality_metric(server, "accuracy") == pytest.approx(2 / 3)

    again = server.client.post("/v1/models/sign/feedback",
                               json=[{"id": ids[0], "label": "pos"}, {"id": ids[3],
                                                                       "label": "neg"}])
    assert again.json()["duplicates"] == [ids[0]] and again.json()["accepted"] == 1
    assert again.json()["quality"]["accuracy"] == pytest.approx(3 / 4)
    stats = server.client.get("/v1/stats").json()["models"][0]["metrics"]["quality"]
    assert stats["labelled"] == 4 and stats["accuracy"] == pytest.approx(0.75)
    assert len(stats["history"]) == 2


def test_bad_feedback_gets_a_clear_error_and_serving_goes_on(
        serve: Callable[..., Server], classifier: Path) -> None:
    server = serve([classifier])
    ids = server.client.post("/v1/models/sign/predict", json=[{"x": 1.0}]).json()["ids"]
    wrong = server.client.post("/v1/models/sign/feedback", json=[{"id": ids[0], "label": 1}])
    assert wrong.status_code == 422
    v = wrong.json()["details"]["violations"][0]
    assert (v["record"], v["field"], v["expected"], v["got"]) == (0, "label", "string", 1)
    shape = server.client.post("/v1/models/sign/feedback", json={"id": ids[0]})
    assert shape.status_code == 400 and shape.json()["code"] == "BAD_SHAPE"
    missing = server.client.post("/v1/models/sign/feedback", json=[{"label": "pos"}])
    assert missing.status_code == 400 and missing.json()["details"]["record"] == 0
    assert server.client.post("/v1/models/nope/feedback", json=[]).status_code == 404
    assert server.client.post("/v1/models/sign/predict", json=[{"x": 1.0}]).status_code == 200


def test_regression_quality_and_v2_prediction_ids(serve: Callable[..., Server],
                                                  chaos_bundle: Path, tmp_path: Path) -> None:
    # Its own Baton home: the quality window must hold only this test's labels.
    server = serve([chaos_bundle], env={"BATON_HOME": str(tmp_path / "home")})
    resp = server.client.post("/v2/models/chaos/infer", json={"inputs": [
        {"name": "action", "shape": [2], "datatype": "BYTES", "data": ["ok", "ok"]},
        {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]})
    ids = resp.json()["parameters"]["prediction_ids"]  # y = 2.0 and 4.0
    fb = server.client.post("/v1/models/chaos/feedback", json=[
        {"id": ids[0], "label": 2.5}, {"id": ids[1], "label": 4}]).json()
    assert fb["quality"]["mae"] == pytest.approx(0.25)
    assert fb["quality"]["rmse"] == pytest.approx(math.sqrt(0.125))


METRICS_CODE = '''
def precision_pos(y_true, y_pred, outputs):
    assert [o["prediction"] for o in outputs] == list(y_pred)
    chosen = [t for t, p in zip(y_true, y_pred) if p == "pos"]
    return sum(1 for t in chosen if t == "pos") / len(chosen) if chosen else 0.0


def broken(y_true, y_pred):
    raise ValueError("this metric is broken on purpose")
'''


def test_declared_metric_functions_run_in_the_models_worker(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "sign2", name="sign2", code=CLASSIFIER,
                          contract=CLASSIFIER_CONTRACT, manifest_extra=(
                              '[monitoring]\nmetrics = ["accuracy", '
                              '"model.metrics:precision_pos", "model.metrics:broken"]\n'))
    (bundle / "model" / "metrics.py").write_text(METRICS_CODE)
    server = serve([bundle])
    ids = server.client.post("/v1/models/sign2/predict",
                             json=[{"x": 1.0}, {"x": 2.0}, {"x": -1.0}]).json()["ids"]
    fb = server.client.post("/v1/models/sign2/feedback", json=[
        {"id": ids[0], "label": "pos"}, {"id": ids[1], "label": "neg"},
        {"id": ids[2], "label": "neg"}])
    assert fb.status_code == 200, fb.text
    out = fb.json()
    assert out["quality"] == {"accuracy": pytest.approx(2 / 3),
                              "model.metrics:precision_pos": pytest.approx(0.5)}
    assert "this metric is broken on purpose" in out["metric_errors"]["model.metrics:broken"]
    text = server.client.get("/metrics").text
    assert ('baton_quality_metric_failures_total{metric="model.metrics:broken",'
            'model="sign2",version="1.0.0"} 1.0') in text
    assert server.client.post("/v1/models/sign2/predict", json=[{"x": 1.0}]).status_code == 200


def test_an_undeclarable_metric_is_refused_in_the_manifest(tmp_path: Path) -> None:
    from baton.bundle.manifest import BundleManifest
    from baton.errors import ManifestError

    bundle = write_bundle(tmp_path / "sign3", name="sign3", code=CLASSIFIER,
                          contract=CLASSIFIER_CONTRACT,
                          manifest_extra='[monitoring]\nmetrics = ["f1 score"]\n')
    with pytest.raises(ManifestError) as err:
        BundleManifest.load(bundle)
    assert err.value.details["field"] == "monitoring.metrics"


def test_stream_outputs_carry_per_event_ids_that_feedback_joins(
        serve: Callable[..., Server], classifier: Path, tmp_path: Path) -> None:
    """Keys name entities and repeat; each output's id names its event."""
    import json

    from tests.deploy.test_deployment import wait_lines

    xs = [-1.0, 2.0, 3.0, -4.0]
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"x": x, "customer": "c1" if i < 2 else "c2"}) + "\n"
        for i, x in enumerate(xs)))
    server = serve([classifier], "--input", f"file://{tmp_path}/in.jsonl?key=customer",
                   "--output", f"file://{tmp_path}/out.jsonl",
                   "--dead-letter", f"file://{tmp_path}/dead.jsonl",
                   env={"BATON_HOME": str(tmp_path / "home"),
                        "BATON_UNKNOWN_FIELDS": "ignore"})  # "customer" is the key
    out = wait_lines(tmp_path / "out.jsonl", 4)
    assert [o["key"] for o in out] == ["c1", "c1", "c2", "c2"]
    ids = [o["id"] for o in out]
    assert len(set(ids)) == 4
    # The first c1 event by its id; "c1" by key is its latest event; then "c2" twice.
    fb = server.client.post("/v1/models/sign/feedback", json=[
        {"id": ids[0], "label": "neg"}, {"id": "c1", "label": "neg"},
        {"id": "c2", "label": "neg"}, {"id": ids[3], "label": "neg"}])
    assert fb.status_code == 200, fb.text
    body = fb.json()
    assert body["accepted"] == 3 and body["duplicates"] == [ids[3]]  # "c2" named ids[3]
    # Labelled: x=-1 -> neg (right), x=2 -> pos (labelled neg: wrong), x=-4 -> neg (right).
    assert body["quality"]["accuracy"] == pytest.approx(2 / 3)
