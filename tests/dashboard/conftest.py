"""Headless Chromium (Debian's, through Playwright) against real engines and a real registry.

Screenshots go to a folder under pytest's temporary directory and are copied to
build/screenshots/ (git-ignored) so they can be looked at after the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from baton.registry.client import RegistryClient
from tests.conftest import BATON, ROOT, Server, free_port, run_baton
from tests.serving.test_registry_serving import Registry, scorer, serve_registry

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
SCREENSHOTS = ROOT / "build" / "screenshots"

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def expected_console() -> list[str]:
    """Console errors a test expects (e.g. the 403 of a refused approval), by substring."""
    return []


@pytest.fixture
def page(browser: Browser, expected_console: list[str]) -> Iterator[Page]:
    """A fresh tab (its own session storage); fails the test on any unexpected script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    tab.on("console", lambda msg: errors.append(f"console: {msg.text}")
           if msg.type == "error" else None)
    tab.on("response", lambda resp: errors.append(f"HTTP {resp.status} {resp.request.method} "
                                                  f"{resp.url}") if resp.status >= 400 else None)
    yield tab
    context.close()
    unexpected = [e for e in errors if not any(x in e for x in expected_console)]
    assert unexpected == [], unexpected


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def shot(screenshot_dir: Path) -> Callable[[Page, str], Path]:
    """``shot(page, "name")``: a full-page PNG in the tmp folder, copied to build/;
    ``shot(page, "name", "#registry")``: only that part of the page."""

    def take(tab: Page, name: str, selector: str | None = None) -> Path:
        path = screenshot_dir / f"{name}.png"
        if selector is None:
            tab.screenshot(path=str(path), full_page=True)
        else:
            tab.locator(selector).screenshot(path=str(path))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, SCREENSHOTS / path.name)
        return path

    return take


@dataclass
class RegistryEngine:
    """A registry whose production stage an engine serves: scorer 1.0.0 is in production,
    scorer 2.0.0 waits in staging for an approval."""

    registry: Registry
    engine: Server

    def approvals(self, ref: str) -> list[dict[str, object]]:
        return self.registry.admin.show(ref)["approvals"]  # type: ignore[no-any-return]

    def decisions(self, version: str) -> list[tuple[str, str]]:
        return [(e["actor"], e["action"]) for e in self.registry.admin.history("scorer")
                if e["version"] == version and e["action"] in ("approve", "reject")]


@pytest.fixture(scope="module")
def registry_engine(tmp_path_factory: pytest.TempPathFactory,
                    baton_env: dict[str, str]) -> Iterator[RegistryEngine]:
    root = tmp_path_factory.mktemp("dashboard-registry")
    env = dict(baton_env, BATON_HOME=str(root / "registry-home"))
    token = run_baton("registry", "bootstrap-admin", "root", env=env).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([*BATON, "registry", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    admin = RegistryClient(url, token)
    reg = Registry(url, root / "registry-home", admin, {}, {})
    engine: Server | None = None
    try:
        _wait_for_registry(admin, proc)
        for user, role in (("dana", "data-scientist"), ("olga", "operator"),
                           ("abe", "approver"), ("eve", "viewer")):
            admin.create_user(user, role)
            reg.tokens[user] = admin.create_token(user, 1)
        reg.release(scorer(root, "1.0.0", 2.0), "1.0.0")
        ds = reg.client("dana")
        ds.push(scorer(root, "2.0.0", 3.0))
        ds.promote("scorer@2.0.0", "validated")
        reg.client("olga").promote("scorer@2.0.0", "staging", "ready for review")
        engine = serve_registry(reg, baton_env)  # it reads the registry as eve, a viewer
        engine.wait_ready()
        yield RegistryEngine(reg, engine)
    finally:
        if engine is not None:
            engine.stop()
        for client in [admin, *reg.clients.values()]:
            client.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _wait_for_registry(admin: RegistryClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.whoami()
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
