"""Drift: the SDK's reference profile, per-feature PSI and KS on live inputs, alerts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import baton
from tests.conftest import Server, free_port


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    X = pd.DataFrame({"x": rng.normal(0, 1, 2000), "colour": rng.choice(["red", "blue"], 2000)})
    y = (X["x"] > 0).astype(int)
    model = make_pipeline(ColumnTransformer([("n", StandardScaler(), ["x"]),
                                             ("c", OneHotEncoder(), ["colour"])]),
                          LogisticRegression())
    model.fit(X, y)
    return baton.package(model, sample=X, name="drifty", version="1.0.0",
                         path=tmp_path_factory.mktemp("drift") / "drifty")


def test_sdk_stores_a_reference_profile(bundle: Path) -> None:
    ref = json.loads((bundle / "monitoring" / "reference.json").read_text())
    x = ref["features"]["x"]
    assert x["kind"] == "numeric" and len(x["edges"]) == 9 and len(x["quantiles"]) == 101
    assert sum(x["proportions"]) == pytest.approx(1.0)
    assert ref["features"]["colour"]["proportions"].keys() == {"red", "blue"}
    assert "monitoring" in (bundle / "baton.toml").read_text()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    httpd = HTTPServer(("127.0.0.1", port), Handler)
    t = threading.Thread(target=httpd.serve_forever)
    t.start()
    yield f"http://127.0.0.1:{port}/alerts", received
    httpd.shutdown()
    httpd.server_close()
    t.join()


def drift_alert(server: Server, feature: str) -> float:
    for fam in text_string_to_metric_families(server.client.get("/metrics").text):
        for s in fam.samples:
            if s.name == "baton_drift_alert" and s.labels["feature"] == feature:
                return s.value
    raise AssertionError(f"no drift sample for {feature}")


@pytest.mark.slow
def test_shifted_inputs_raise_a_drift_alert(serve: Callable[..., Server], bundle: Path,
                                            webhook: tuple[str, list[dict]]) -> None:
    url, received = webhook
    server = serve([bundle], env={"BATON_DRIFT_INTERVAL": "0.2", "BATON_DRIFT_WEBHOOK": url})
    rng = np.random.default_rng(1)

    def send(shift: float) -> None:
        rows = [{"x": float(v) + shift, "colour": str(c)} for v, c in
                zip(rng.normal(0, 1, 400), rng.choice(["red", "blue"], 400), strict=True)]
        assert server.client.post("/v1/models/drifty/predict", json=rows).status_code == 200

    send(0.0)
    time.sleep(0.6)
    assert drift_alert(server, "x") == 0.0 and received == []
    for _ in range(3):
        send(3.0)
    deadline = time.monotonic() + 30
    while not received:
        assert time.monotonic() < deadline, "no drift alert reached the webhook"
        time.sleep(0.1)
    alert = received[0]
    assert (alert["model"], alert["feature"]) == ("drifty", "x")
    assert alert["psi"] > alert["threshold"] == 0.2 and alert["ks"] > 0.3
    assert drift_alert(server, "x") == 1.0 and drift_alert(server, "colour") == 0.0
    stats = server.client.get("/v1/stats").json()["models"][0]
    assert stats["drift"]["x"]["drifting"] and not stats["drift"]["colour"]["drifting"]
    assert stats["drift_alerts"][0]["feature"] == "x"
