"""The report's page in Chromium: every section shows, it loads with the network cut off and
asks nothing of any other origin, and values from a bundle cannot add markup to it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from baton.report.html import render_html

from .conftest import Written

pytestmark = pytest.mark.slow  # the real check and a measured model, once a session

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

SECTIONS = ["identity", "check", "performance", "quality", "contract", "dependencies", "sbom",
            "drift", "registry"]


class Offline:
    """A tab where every request but the page's own is aborted, and recorded."""

    def __init__(self, page: Page, own: str) -> None:
        self.page, self.own, self.refused = page, own, []
        page.route("**/*", self._route)

    def _route(self, route: Route) -> None:
        if route.request.url == self.own:
            route.continue_()
        else:
            self.refused.append(route.request.url)
            route.abort()


@pytest.fixture
def offline(browser: Browser) -> Iterator[Callable[[Path], Offline]]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    errors: list[str] = []

    def open_(path: Path) -> Offline:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab = Offline(page, path.as_uri())
        page.goto(path.as_uri(), wait_until="load")
        return tab

    yield open_
    context.close()
    assert errors == []


OpenOffline = Callable[[Path], Offline]


def test_the_page_shows_every_section_offline(example_report: Written, offline: OpenOffline,
                                              tmp_path: Path) -> None:
    tab = offline(example_report.folder / "report.html")
    page, data = tab.page, example_report.data
    assert page.get_by_test_id("summary").inner_text() == data["summary"]
    for name in SECTIONS:
        assert page.get_by_test_id(name).is_visible(), name
    assert page.locator("[data-testid=stages] tbody tr").count() == len(data["check"]["stages"])
    assert page.locator("[data-testid=grid] tbody tr").count() == 9
    assert page.locator("[data-testid=histogram] svg rect").count() > 0
    assert page.locator("[data-testid=histogram]").count() == \
        len(data["drift_reference"]["features"])
    assert page.locator("[data-testid=packages] tbody tr").count() == \
        len(data["dependencies"]["packages"])
    shot = tmp_path / "handoff-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert tab.refused == []  # nothing but the page itself was ever asked for


def test_values_from_a_bundle_cannot_load_or_run_anything(
        example_report: Written, offline: OpenOffline, tmp_path: Path) -> None:
    hostile = copy.deepcopy(example_report.data)
    attack = ('<img src="http://198.51.100.7/x.png"><script>document.title="owned"</script>'
              '<link rel="stylesheet" href="https://198.51.100.7/s.css">')
    hostile["identity"]["description"] = attack
    hostile["contract"]["inputs"][0]["name"] = attack
    hostile["summary"] = attack
    path = tmp_path / "hostile.html"
    path.write_text(render_html(hostile))
    tab = offline(path)
    assert tab.page.get_by_test_id("summary").inner_text() == attack  # shown as text
    assert tab.page.title().startswith("Baton handoff report")
    assert tab.page.locator("main img, main script, main link").count() == 0
    assert tab.refused == []
    assert json.loads(json.dumps(hostile))  # the JSON stays what it was given
