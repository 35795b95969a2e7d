"""The handoff report of the example bundle, written once per session by the real
``baton report`` (which runs the real ``baton check``), and a headless Chromium to open it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from tests.conftest import EXAMPLE, run_baton

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]

if TYPE_CHECKING:
    from playwright.sync_api import Browser


class Written(NamedTuple):
    folder: Path
    data: dict[str, Any]
    stdout: str


@pytest.fixture(scope="session")
def example_report(baton_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Written:
    folder = tmp_path_factory.mktemp("handoff") / "out"
    r = run_baton("report", EXAMPLE, "--output", folder, "--seconds", "0.2", env=baton_env,
                  timeout=900)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return Written(folder, json.loads((folder / "report.json").read_text()), r.stdout)


# Package scope: Playwright's sync API keeps its loop as the main thread's running loop
# while it is open (see tests/dashboard/conftest.py).
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():  # a setup failure: `make test` installs it
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-packages.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The dashboard's real registry and engine, its tab and screenshots (tests/dashboard/).
from tests.dashboard.conftest import (  # noqa: E402,F401
    expected_console,
    page,
    registry_engine,
    screenshot_dir,
    shot,
)
