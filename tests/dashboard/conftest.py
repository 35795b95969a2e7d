"""Headless Chromium (Debian's, through Playwright) against real engines and a real registry.

Screenshots go to a folder under pytest's temporary directory and are copied to
build/screenshots/ (git-ignored) so they can be looked at after the run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from baton.registry.client import RegistryClient
from tests.conftest import ROOT, Server
from tests.security.engines import RegistryProcess, follower_args
from tests.serving.test_registry_serving import scorer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
SCREENSHOTS = ROOT / "build" / "screenshots"

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


# Package scope, not session: Playwright's sync API keeps its event loop registered as the
# running loop of the main thread while it is open, so every later test calling
# asyncio.run() would fail with "cannot be called from a running event loop".
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
class DashboardRegistry:
    """A real registry with a data scientist, an operator, an approver and a viewer."""

    process: RegistryProcess
    tokens: dict[str, str] = field(default_factory=dict)
    clients: dict[str, RegistryClient] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def admin(self) -> RegistryClient:
        return self.process.admin

    def client(self, user: str) -> RegistryClient:
        if user not in self.clients:
            self.clients[user] = RegistryClient(self.url, self.tokens[user])
        return self.clients[user]

    def release(self, archive: Path, version: str) -> None:
        """push, validate (a real check), stage, approve, production."""
        ds, op, ap = self.client("dana"), self.client("olga"), self.client("abe")
        ds.push(archive)
        ds.promote(f"scorer@{version}", "validated")
        op.promote(f"scorer@{version}", "staging")
        ap.decide(f"scorer@{version}", "approve", "reviewed the check report")
        op.promote(f"scorer@{version}", "production", "release")


@dataclass
class RegistryEngine:
    """A registry whose production stage an engine serves: scorer 1.0.0 is in production,
    scorer 2.0.0 waits in staging for an approval. The engine reads the registry as eve, a
    viewer, and takes the registry's tokens from its callers (its ``client`` sends
    dana's, who may infer and read)."""

    registry: DashboardRegistry
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
    reg = DashboardRegistry(RegistryProcess(root / "registry-home", baton_env))
    engine: Server | None = None
    try:
        reg.process.start()
        for user, role in (("dana", "data-scientist"), ("olga", "operator"),
                           ("abe", "approver"), ("eve", "viewer")):
            reg.tokens[user] = reg.process.user(user, role)[0]
        reg.release(scorer(root, "1.0.0", 2.0), "1.0.0")
        ds = reg.client("dana")
        ds.push(scorer(root, "2.0.0", 3.0))
        ds.promote("scorer@2.0.0", "validated")
        reg.client("olga").promote("scorer@2.0.0", "staging", "ready for review")
        engine = Server([], dict(baton_env, BATON_TOKEN=reg.tokens["eve"]),
                        follower_args(reg.process))
        engine.client.headers["authorization"] = f"Bearer {reg.tokens['dana']}"
        engine.wait_ready()
        yield RegistryEngine(reg, engine)
    finally:
        if engine is not None:
            engine.stop()
        for client in reg.clients.values():
            client.close()
        reg.process.close()
