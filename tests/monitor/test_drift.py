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
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import baton
from baton.batch import Batch
from baton.contract.spec import FieldSpec
from baton.monitor import drift
from baton.monitor.drift import DriftMonitor, reference_profile
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


def wait_for_drift(server: Server, done: Callable[[dict], bool],
                   timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        drift = server.client.get("/v1/stats").json()["models"][0]["drift"]
        if done(drift):
            return drift
        assert time.monotonic() < deadline, f"drift never reached the expected state: {drift}"
        time.sleep(0.05)


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
    # Decided by what the engine computed on these 400 rows, not by a sleep: no drift.
    unshifted = wait_for_drift(server, lambda d: d.get("x", {}).get("rows") == 400)
    assert not unshifted["x"]["drifting"] and unshifted["x"]["psi"] < 0.2
    assert drift_alert(server, "x") == 0.0
    for _ in range(3):
        send(3.0)
    deadline = time.monotonic() + 30
    while not received:
        assert time.monotonic() < deadline, "no drift alert reached the webhook"
        time.sleep(0.1)
    # Every alert came from a window holding shifted rows: the unshifted one raised none
    # (an alert on it would come first, and x would then never be "newly" drifting again).
    assert [(a["feature"], a["rows"] > 400) for a in received] == [("x", True)]
    alert = received[0]
    assert (alert["model"], alert["feature"]) == ("drifty", "x")
    assert alert["psi"] > alert["threshold"] == 0.2 and alert["ks_at_percentiles"] > 0.3
    assert alert["ks"] == alert["ks_at_percentiles"]  # the deprecated name still answers
    assert drift_alert(server, "x") == 1.0 and drift_alert(server, "colour") == 0.0
    stats = server.client.get("/v1/stats").json()["models"][0]
    assert stats["drift"]["x"]["drifting"] and not stats["drift"]["colour"]["drifting"]
    assert stats["drift_alerts"][0]["feature"] == "x"


# -- PSI, KS and the window against reference computations ---------------------------------

def _profile(train: pd.DataFrame) -> dict:
    return reference_profile(train, [FieldSpec("x", "float"), FieldSpec("colour", "string")])


def _monitor(train: pd.DataFrame, window: int = 5000) -> DriftMonitor:
    return DriftMonitor(_profile(train), threshold=0.2, window=window)


_WINDOW_REFERENCE = _profile(pd.DataFrame({"x": np.linspace(-3, 300, 200),
                                           "colour": ["a", "b", "c", "d"] * 50}))


def _live(x: np.ndarray, colour: list[str | None]) -> Batch:
    return Batch({"x": x, "colour": colour}, len(x))


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.5])
def test_psi_and_ks_agree_with_scipy(shift: float) -> None:
    rng = np.random.default_rng(11)
    train = pd.DataFrame({"x": rng.normal(0, 1, 2000),
                          "colour": rng.choice(["red", "blue", "green"], 2000, p=[.5, .3, .2])})
    x = rng.normal(shift, 1, 3000)
    colour = list(rng.choice(["red", "blue", "green"], 3000, p=[.2, .3, .5]))
    monitor = _monitor(train)
    monitor.observe(_live(x, colour))
    got = monitor.compute(max_age=0)

    # PSI is the symmetric Kullback-Leibler divergence of the binned shares, KL(a|e) + KL(e|a),
    # binned by the training deciles (a bin holds [edge, next edge)).
    bins = np.concatenate([[-np.inf], np.quantile(train["x"], np.linspace(0.1, 0.9, 9)),
                           [np.inf]])
    expected = np.histogram(train["x"], bins)[0] / len(train)
    actual = np.histogram(x, bins)[0] / len(x)
    if actual.min() > drift.EPS:  # far shifts leave bins empty, which PSI clips to EPS
        oracle = scipy.stats.entropy(actual, expected) + scipy.stats.entropy(expected, actual)
        assert got["x"]["psi"] == pytest.approx(oracle, rel=1e-9)
    # KS is measured at the reference's 101 quantiles: within one percentile step (plus the
    # quantiles' interpolation, 1/n) of the exact two-sample statistic.
    exact = scipy.stats.ks_2samp(x, train["x"]).statistic
    assert abs(got["x"]["ks_at_percentiles"] - exact) <= 0.01 + 1 / len(train)
    assert got["x"]["ks"] == got["x"]["ks_at_percentiles"]
    assert got["x"]["drifting"] == (got["x"]["psi"] > 0.2)

    cats = ["blue", "green", "red"]
    e = train["colour"].value_counts(normalize=True)[cats].to_numpy()
    a = pd.Series(colour).value_counts(normalize=True)[cats].to_numpy()
    oracle = scipy.stats.entropy(a, e) + scipy.stats.entropy(e, a)
    assert got["colour"]["psi"] == pytest.approx(oracle, rel=1e-9)
    assert got["colour"]["unseen_share"] == 0.0


def test_psi_flags_a_large_shift_and_not_noise() -> None:
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"x": rng.normal(0, 1, 2000), "colour": rng.choice(["a", "b"], 2000)})
    same, shifted = _monitor(train), _monitor(train)
    same.observe(_live(rng.normal(0, 1, 1000), list(rng.choice(["a", "b"], 1000))))
    shifted.observe(_live(rng.normal(1, 1, 1000), ["c"] * 1000))
    assert same.newly_drifting(same.compute(max_age=0)) == []
    result = shifted.compute(max_age=0)
    assert shifted.newly_drifting(result) == ["colour", "x"]
    assert result["colour"]["unseen_share"] == 1.0
    assert shifted.newly_drifting(shifted.compute(max_age=0)) == []  # alerts once


def test_fewer_rows_than_the_minimum_give_no_figures() -> None:
    rng = np.random.default_rng(5)
    monitor = _monitor(pd.DataFrame({"x": rng.normal(0, 1, 500), "colour": ["a"] * 500}))
    monitor.observe(_live(rng.normal(5, 1, drift.MIN_ROWS - 1), ["z"] * (drift.MIN_ROWS - 1)))
    assert monitor.compute(max_age=0) == {}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.lists(st.integers(0, 400), min_size=1, max_size=20))
def test_the_window_holds_exactly_the_latest_values(window: int, sizes: list[int]) -> None:
    """Whatever the batch sizes (empty, larger than the window, wrapping around), the window
    holds the latest ``window`` values: the same figures as a monitor fed only those."""
    monitor = DriftMonitor(_WINDOW_REFERENCE, window=window)
    stream_x: list[float] = []
    stream_c: list[str | None] = []
    n = 0
    for size in sizes:
        x = np.arange(n, n + size, dtype=np.float64)
        x[::7] = np.nan  # missing values travel as NaN
        colour = [None if i % 5 == 0 else "abcde"[i % 5] for i in range(n, n + size)]
        monitor.observe(_live(x, colour))
        stream_x += x.tolist()
        stream_c += colour
        n += size
    latest = min(window, n)
    ring_x, ring_c = monitor.rings["x"], monitor.rings["colour"]
    assert ring_x.filled == ring_c.filled == latest
    tail_x = np.array(stream_x[n - latest:])
    np.testing.assert_array_equal(np.sort(ring_x.current()), np.sort(tail_x))
    assert sorted(ring_c.current(), key=repr) == sorted(stream_c[n - latest:], key=repr)
    reference = DriftMonitor(_WINDOW_REFERENCE, window=window)
    reference.observe(_live(tail_x, stream_c[n - latest:]))
    assert monitor.compute(max_age=0) == reference.compute(max_age=0)


def test_ks_at_percentiles_is_the_gap_at_the_reference_percentiles() -> None:
    """A hand-computed case where the figure and the two-sample statistic differ: the
    reference's 101 quantiles are 0, 1, ..., 100 and every live value is 50.5. At the
    percentiles the live share below 50 is 0 against 0.5 for the reference (a gap of
    0.5); the two-sample statistic against those 101 values would be 51/101."""
    reference = {"features": {"x": {
        "kind": "numeric", "missing": 0.0, "edges": [10.0 * k for k in range(1, 10)],
        "proportions": [0.1] * 10, "quantiles": [float(k) for k in range(101)]}}}
    monitor = drift.DriftMonitor(reference)
    monitor.observe(Batch({"x": np.full(100, 50.5)}, 100))
    got = monitor.compute(max_age=0)["x"]
    assert got["ks_at_percentiles"] == 0.5
    assert got["ks"] == 0.5  # the deprecated name carries the same figure
    two_sample = scipy.stats.ks_2samp(np.full(100, 50.5), np.arange(101.0)).statistic
    assert two_sample == pytest.approx(51 / 101)
