"""The dashboard in a real browser against a real engine: models, live charts, errors."""

from __future__ import annotations

import collections
import inspect
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import CHAOS_CODE, CHAOS_CONTRACT, Server, write_bundle

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drift_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chaos model with a training reference: x ~ N(0, 1), action always "ok"."""
    path = write_bundle(tmp_path_factory.mktemp("drift") / "chaos", name="chaos",
                        code=CHAOS_CODE, contract=CHAOS_CONTRACT,
                        manifest_extra='[monitoring]\nreference = "monitoring/reference.json"\n')
    normal = statistics.NormalDist()
    x = {"kind": "numeric", "missing": 0.0, "proportions": [0.1] * 10,
         "edges": [normal.inv_cdf(i / 10) for i in range(1, 10)],
         "quantiles": [-4.0, *(normal.inv_cdf(i / 100) for i in range(1, 100)), 4.0]}
    action = {"kind": "categorical", "missing": 0.0, "proportions": {"ok": 1.0}}
    (path / "monitoring").mkdir()
    (path / "monitoring" / "reference.json").write_text(json.dumps(
        {"rows": 1000, "features": {"x": x, "action": action}}))
    return path


def figure(page: Page, testid: str) -> float | None:
    value = page.get_by_test_id(testid).get_attribute("data-value")
    return float(value) if value else None


def wait_until(page: Page, cond: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``cond`` while the page runs (its timers keep firing between checks)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            source = inspect.getsource(cond).strip()
            raise AssertionError(f"not met within {timeout}s: {source}\n"
                                 f"page text: {page.inner_text('body')[:2000]}")
        page.wait_for_timeout(200)


@contextmanager
def traffic(server: Server, bodies: list[list[dict[str, Any]]]) -> Iterator[list[int]]:
    """Send the bodies round-robin from a thread until the block ends; yield the statuses."""
    stop = threading.Event()
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                resp = client.post("/v1/models/chaos/predict", json=bodies[i % len(bodies)])
                statuses.append(resp.status_code)
                i += 1
                stop.wait(0.01)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(30)


def test_page_lists_the_model_with_its_health(serve: Callable[..., Server], chaos_bundle: Path,
                                              page: Page, shot: Callable[..., Path]) -> None:
    from playwright.sync_api import expect

    server = serve([chaos_bundle], "--workers", "2")
    pids = server.worker_pids("chaos")
    digest = server.model("chaos")["parameters"]["digest"]
    page.goto(f"{server.url}/ui")
    row = page.get_by_test_id("model-row-chaos")
    expect(row.get_by_test_id("model-name")).to_have_text("chaos")
    expect(row.get_by_test_id("model-version")).to_have_text("1.0.0")
    expect(row.get_by_test_id("health")).to_have_text("ready")
    for pid in pids:
        expect(row).to_contain_text(f"pid {pid} · ready")
    expect(row).to_contain_text("local bundle")
    expect(row.locator("code")).to_have_attribute("title", digest)
    expect(page.get_by_test_id("engine-status")).to_have_attribute("data-state", "ready")
    # A second poll gives the first rates: no traffic yet, so 0, and no error banner.
    expect(page.get_by_test_id("figure-rps")).to_have_attribute("data-value", "0")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    expect(page.get_by_test_id("figure-mem")).not_to_have_attribute("data-value", "")
    quality = page.get_by_test_id("quality-panel")
    expect(quality).to_have_attribute("data-state", "empty")
    expect(quality).to_contain_text("No quality data yet")
    drift = page.get_by_test_id("drift-panel")
    expect(drift).to_have_attribute("data-state", "empty")
    expect(drift).to_contain_text("No drift data yet")
    expect(drift).to_contain_text("no training reference profile")
    expect(page.get_by_test_id("registry-off")).to_contain_text("not from a registry")
    shot(page, "01-models")


def test_charts_move_with_traffic(serve: Callable[..., Server], chaos_bundle: Path,
                                  page: Page, shot: Callable[..., Path]) -> None:
    from playwright.sync_api import expect

    server = serve([chaos_bundle])
    page.goto(f"{server.url}/ui")
    expect(page.get_by_test_id("figure-rps")).to_have_attribute("data-value", "0")
    batch = [{"action": "ok", "x": float(i)} for i in range(4)]
    with traffic(server, [batch]) as statuses:
        wait_until(page, lambda: (figure(page, "figure-rps") or 0) > 5)
        wait_until(page, lambda: figure(page, "figure-p50") is not None)
        rps, recps = figure(page, "figure-rps"), figure(page, "figure-recps")
        assert rps is not None and recps is not None
        assert recps == pytest.approx(4 * rps, rel=0.25)  # four records per request
        legend = page.get_by_test_id("chart-throughput").locator("li[data-series=rps]")
        assert float(legend.get_attribute("data-value") or 0) > 0
        total = figure(page, "figure-total")
        wait_until(page, lambda: (figure(page, "figure-total") or 0) > (total or 0))
        shot(page, "02-traffic")
    assert statuses and set(statuses) == {200}

    # Ground truth for a few predictions: the quality panel shows real figures.
    body = server.client.post("/v1/models/chaos/predict", json=batch).json()
    labels = [{"id": pid, "label": p["y"] + 1.0} for pid, p in zip(body["ids"],
                                                                    body["predictions"],
                                                                    strict=True)]
    assert server.client.post("/v1/models/chaos/feedback", json=labels).status_code == 200
    expect(page.get_by_test_id("quality-panel")).to_have_attribute("data-state", "data")
    expect(page.get_by_test_id("quality-mae")).to_have_attribute("data-value", "1")
    expect(page.get_by_test_id("quality-labelled")).to_have_attribute("data-value", "4")
    shot(page, "03-quality", "#quality")


def test_errors_show_the_failing_stage(serve: Callable[..., Server], chaos_bundle: Path,
                                       page: Page, shot: Callable[..., Path]) -> None:
    from playwright.sync_api import expect

    server = serve([chaos_bundle])
    page.goto(f"{server.url}/ui")
    expect(page.get_by_test_id("figure-errps")).to_have_attribute("data-value", "0")
    ok = [{"action": "ok", "x": 1.0}]
    model_error = [{"action": "raise", "x": 1.0}]  # the model raises
    contract_error = [{"action": "ok", "x": 1000.0}]  # x is out of the contract's range
    with traffic(server, [ok, model_error, model_error, contract_error]):
        banner = page.get_by_test_id("error-banner")
        expect(banner).to_be_visible(timeout=15000)
        wait_until(page, lambda: page.get_by_test_id("error-line").count() == 2)
        expect(banner).to_have_attribute("data-stage", "model")
        expect(banner).to_have_attribute("data-code", "MODEL_ERROR")
        first, second = page.get_by_test_id("error-line").all()
        expect(first).to_contain_text("Errors at stage: model (MODEL_ERROR) — ")
        expect(first).to_contain_text("/s on chaos 1.0.0")
        expect(second).to_contain_text("Errors at stage: contract (CONTRACT_VIOLATION)")
        legend = page.get_by_test_id("chart-errors")
        assert float(legend.locator("li[data-series=err_model]").get_attribute("data-value")
                     or 0) > 0
        assert legend.locator("li[data-series=err_decode]").get_attribute("data-value") == "0"
        expect(page.get_by_test_id("figure-errps")).to_have_class("figure alert")
        shot(page, "04-errors")


def test_drift_shows_each_feature_and_names_the_drifting_one(
        serve: Callable[..., Server], drift_bundle: Path, page: Page,
        shot: Callable[..., Path]) -> None:
    from playwright.sync_api import expect

    server = serve([drift_bundle])
    page.goto(f"{server.url}/ui")
    panel = page.get_by_test_id("drift-panel")
    expect(panel).to_contain_text("once enough recent inputs have arrived")
    shifted = [{"action": "ok", "x": 50.0 + i / 100} for i in range(150)]  # far from N(0, 1)
    assert server.client.post("/v1/models/chaos/predict", json=shifted).status_code == 200
    expect(panel).to_have_attribute("data-state", "data")
    expect(page.get_by_test_id("drift-x")).to_have_attribute("data-drifting", "true")
    expect(page.get_by_test_id("drift-action")).to_have_attribute("data-drifting", "false")
    expect(page.get_by_test_id("drift-x")).to_contain_text("drifting")
    # KS at the reference's percentiles: every value lies above them all; none for categories.
    expect(page.get_by_test_id("drift-x").locator("td").nth(2)).to_have_text("1.000")
    expect(page.get_by_test_id("drift-action").locator("td").nth(2)).to_have_text("—")
    banner = page.get_by_test_id("drift-banner")
    expect(banner).to_contain_text("Input drift on chaos 1.0.0: x (PSI ")
    expect(banner).not_to_contain_text("action")
    wait_until(page, lambda: page.locator("#chart-drift li[data-series=x]")
               .get_attribute("data-value") not in (None, ""))
    shot(page, "05-drift", "#quality")
    shot(page, "05-drift-page")


def test_canary_and_shadow_candidates_have_rows_of_their_own(
        serve: Callable[..., Server], tmp_path: Path, page: Page,
        shot: Callable[..., Path]) -> None:
    from playwright.sync_api import expect

    from tests.serving.test_registry_serving import version_of
    from tests.serving.test_stats_roles import scorer_dir

    live = scorer_dir(tmp_path, "1.0.0", 2.0)
    canary = scorer_dir(tmp_path, "1.1.0", 3.0)
    shadow = scorer_dir(tmp_path, "2.0.0", 4.0)
    server = serve([live], "--canary", f"{canary}=10", "--shadow", str(shadow))
    page.goto(f"{server.url}/ui")
    rows = page.locator("#models-body tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_attribute("data-role", "live")
    expect(rows.nth(1)).to_have_attribute("data-role", "canary")
    expect(rows.nth(2)).to_have_attribute("data-role", "shadow")
    live_row = page.get_by_test_id("model-row-scorer")
    canary_row = page.get_by_test_id("model-row-scorer:canary")
    shadow_row = page.get_by_test_id("model-row-scorer:shadow")
    expect(live_row.get_by_test_id("model-version")).to_have_text("1.0.0 (live)")
    expect(canary_row.get_by_test_id("model-version")).to_have_text("1.1.0 (canary 10%)")
    expect(shadow_row.get_by_test_id("model-version")).to_have_text("2.0.0 (shadow)")
    for row in (live_row, canary_row, shadow_row):
        expect(row.get_by_test_id("model-name")).to_have_text("scorer")
        expect(row.get_by_test_id("health")).to_have_text("ready")
    expect(live_row.get_by_test_id("traffic")).to_contain_text("canary 10% → 1.1.0")

    answered = collections.Counter(version_of(server) for _ in range(40))
    expect(live_row.get_by_test_id("traffic")).to_contain_text(
        f"{answered['1.1.0']} of 40 requests sent to it")
    expect(canary_row.get_by_test_id("traffic")).to_contain_text(
        f"{answered['1.1.0']} of 40 requests so far")
    expect(shadow_row.get_by_test_id("traffic")).to_contain_text(
        f"{answered['1.0.0']} rows compared, {answered['1.0.0']} differ")

    # The live figures follow the row clicked: the canary counts only what it answered.
    canary_row.click()
    expect(page.get_by_test_id("model-select")).to_have_value("scorer:canary")
    expect(page.get_by_test_id("figure-total")).to_have_attribute(
        "data-value", str(answered["1.1.0"]))
    expect(page.get_by_test_id("quality-panel")).to_contain_text("is a candidate")
    shadow_row.click()
    expect(page.get_by_test_id("figure-total")).to_have_attribute("data-value", "0")
    page.get_by_test_id("model-select").select_option("scorer")
    expect(live_row).to_have_class("selected")
    expect(page.get_by_test_id("figure-total")).to_have_attribute(
        "data-value", str(answered["1.0.0"]))
    shot(page, "06-canary-shadow")
