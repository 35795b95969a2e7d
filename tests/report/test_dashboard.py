"""The dashboard's registry view links the handoff report of each version that has one; the
link fetches the page with the signed-in token through the engine's proxy and saves it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.dashboard.conftest import RegistryEngine
from tests.dashboard.test_registry_view import ASKED, give_engine_token

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


def test_the_registry_view_opens_a_versions_report(
        registry_engine: RegistryEngine, page: Page, shot: Callable[..., Path],
        expected_console: list[str], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    reg = registry_engine.registry
    expected_console += ASKED
    page.goto(f"{registry_engine.engine.url}/ui")
    give_engine_token(page, reg.tokens["eve"])  # a viewer: reading a report needs only read
    link = page.get_by_test_id("report-scorer-2.0.0")
    expect(link).to_be_visible()
    summary = reg.admin.http.get("/bundles/scorer/2.0.0/report").json()["summary"]
    with page.expect_download() as saving:
        link.click()
    download = saving.value
    assert download.suggested_filename == "scorer-2.0.0-report.html"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    report = page.context.new_page()
    report.goto(saved.as_uri())
    expect(report.get_by_test_id("summary")).to_have_text(summary)
    expect(report.get_by_test_id("registry")).to_be_visible()
    # its own style applies (nothing inherited from the dashboard forbids it)
    assert report.locator("h2").first.evaluate(
        "e => getComputedStyle(e).borderBottomStyle") == "solid"
    shot(report, "registry-handoff-report")
