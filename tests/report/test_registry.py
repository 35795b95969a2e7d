"""The registry keeps the handoff report of the version it validated and serves it; the
CLI shows its link, and an approver reads its summary before the approval is recorded.
A real ``baton registry serve`` (SQLite: the report store is files beside the archives,
whatever the database) whose validation runs the real ``baton check`` and ``baton report``."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from baton.bundle.archive import build_archive, bundle_digest
from baton.registry.client import RegistryClient
from tests.conftest import BATON, EXAMPLE, free_port, run_baton
from tests.registry.test_cli import expect, stop, wait_ready

pytestmark = pytest.mark.slow  # validation runs the check and measures the model

REPORT = "/api/v1/bundles/penguins/1.0.0/report"


class Validated(NamedTuple):
    url: str
    admin: str
    approver: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def registry(baton_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Validated]:
    """A registry holding penguins@1.0.0 validated (with its report) and 1.0.1 as a draft."""
    env = {k: v for k, v in baton_env.items() if not k.startswith(("BATON_REGISTRY",
                                                                   "BATON_TOKEN"))}
    folder = tmp_path_factory.mktemp("report-registry")
    env["XDG_CONFIG_HOME"] = str(folder / "config")
    store = ("--db", f"sqlite:///{folder / 'registry.db'}", "--storage", str(folder / "s"),
             "--key-file", str(folder / "signing.key"))
    admin = expect(run_baton("registry", "bootstrap-admin", "root", *store, env=env),
                   0).stdout.strip()
    port = free_port()
    with open(folder / "registry.log", "w+") as log:
        proc = subprocess.Popen([*BATON, "registry", "serve", *store, "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, log)
            yield _populate(url, admin, env, folder)
        finally:
            stop(proc)


def _populate(url: str, admin: str, env: dict[str, str], folder: Path) -> Validated:
    client = RegistryClient(url, admin, timeout=900)
    try:
        client.push(build_archive(EXAMPLE, folder / "a").path)
        assert client.promote("penguins@1.0.0", "validated")["stage"] == "validated"
        draft = folder / "draft"
        shutil.copytree(EXAMPLE, draft)
        toml = draft / "baton.toml"
        toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
        client.push(build_archive(draft, folder / "b").path)
        client.create_user("ada", "approver")
        approver = client.create_token("ada")
    finally:
        client.close()
    return Validated(url, admin, approver, env)


def api(reg: Validated, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=reg.url, headers=headers, timeout=60)


def test_the_registry_serves_the_report_it_wrote_when_it_validated(registry: Validated) -> None:
    with api(registry, registry.admin) as c:
        shown = c.get("/api/v1/bundles/penguins/1.0.0").json()
        report = c.get(REPORT).json()
        page = c.get(REPORT + ".html")
    assert shown["report"] == {"json": REPORT, "html": REPORT + ".html"}
    assert report["identity"]["digest"] == shown["digest"] == bundle_digest(EXAMPLE)
    # the report is of the check the registry ran and stored with the version
    assert report["check"]["stages"] == shown["check_report"]["stages"]
    assert report["check"]["passed"] is True and len(report["performance"]["grid"]) == 9
    assert report["registry"]["stage"] == "validated"
    assert [e["action"] for e in report["registry"]["audit"]] == ["push", "validate"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert html.escape(report["summary"]) in page.text
    assert "handoff" not in shown["check_report"]  # the database keeps the check alone


def test_the_report_needs_the_read_scope_and_a_validated_version(registry: Validated) -> None:
    with api(registry, None) as anonymous:
        assert anonymous.get(REPORT + ".html").status_code == 401
    with api(registry, registry.admin) as c:
        missing = c.get("/api/v1/bundles/penguins/1.0.1/report")
        assert "report" not in c.get("/api/v1/bundles/penguins/1.0.1").json()
    assert missing.status_code == 404 and missing.json()["code"] == "REPORT_NOT_FOUND"


def test_baton_show_prints_the_reports_link(registry: Validated) -> None:
    env = dict(registry.env, BATON_REGISTRY=registry.url, BATON_TOKEN=registry.admin)
    out = expect(run_baton("show", "penguins@1.0.0", env=env), 0).stdout
    link = f"{registry.url}{REPORT}.html"
    assert f"handoff report: {link}" in [line.strip() for line in out.splitlines()]
    draft = expect(run_baton("show", "penguins@1.0.1", env=env), 0).stdout
    assert "handoff report" not in draft


def test_an_approver_reads_the_summary_before_the_approval_is_recorded(
        registry: Validated) -> None:
    env = dict(registry.env, BATON_REGISTRY=registry.url, BATON_TOKEN=registry.approver)
    with api(registry, registry.admin) as c:
        summary = c.get(REPORT).json()["summary"]
    r = expect(run_baton("approve", "penguins@1.0.0", "--reason", "read the report", env=env),
               0)
    # on the terminal before the approval is recorded; the output itself stays the result
    assert r.stderr.splitlines() == [f"handoff report: {summary}",
                                     f"  {registry.url}{REPORT}.html"]
    assert r.stdout == "approved penguins@1.0.0 (1 approvals)\n"
    with api(registry, registry.admin) as c:
        approvals = c.get(REPORT).json()["registry"]["approvals"]
    assert [(a["user"], a["decision"]) for a in approvals] == [("ada", "approve")]


def test_baton_report_of_a_registry_version_carries_its_approvals_and_audit_trail(
        registry: Validated, tmp_path: Path) -> None:
    env = dict(registry.env, BATON_REGISTRY=registry.url, BATON_TOKEN=registry.admin)
    r = run_baton("report", "penguins@1.0.0", "--output", tmp_path, "--seconds", "0.1",
                  env=env, timeout=900)
    assert r.returncode == 0, (r.stdout, r.stderr)
    data = json.loads((tmp_path / "report.json").read_text())
    with api(registry, registry.admin) as c:
        shown = c.get("/api/v1/bundles/penguins/1.0.0").json()
    assert data["identity"]["digest"] == shown["digest"]
    assert data["check"]["stages"] == shown["check_report"]["stages"]  # not run again
    assert data["registry"]["approvals"] == shown["approvals"]
    assert {"push", "validate"} <= {e["action"] for e in data["registry"]["audit"]}
    assert "Approvals and audit trail" in (tmp_path / "report.html").read_text()
