"""The registry view and its proxy: the caller's own token decides, the registry enforces;
the page asks for the engine's token first, and shows a token that lacks a scope as such."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.dashboard.conftest import RegistryEngine

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


#: What the browser logs for the engine's 401 before a token is given.
ASKED = ["status of 401", "HTTP 401 GET"]


def sign_in(page: Page, token: str) -> None:
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("sign-in").click()


def give_engine_token(page: Page, token: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("auth-form")).to_be_visible()
    page.get_by_test_id("auth-token").fill(token)
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("auth-form")).to_be_hidden()


def test_approver_approves_from_the_ui_and_a_viewer_is_refused(
        registry_engine: RegistryEngine, page: Page, shot: Callable[..., Path],
        expected_console: list[str]) -> None:
    from playwright.sync_api import expect

    reg, engine = registry_engine.registry, registry_engine.engine
    expected_console += ["status of 403", "HTTP 403 POST", *ASKED]  # the refused approval
    page.goto(f"{engine.url}/ui")
    # A viewer's registry token is an engine token too (read): the page asks for it once
    # and signs in to the registry view with it.
    give_engine_token(page, reg.tokens["eve"])
    expect(page.get_by_test_id("model-row-scorer")).to_contain_text("production")
    expect(page.get_by_test_id("registry-info")).to_contain_text(reg.url)

    # A viewer sees the staged version but the registry refuses their approval.
    expect(page.get_by_test_id("whoami")).to_have_text("Signed in as eve (viewer)")
    row = page.get_by_test_id("bundle-scorer-2.0.0")
    expect(row).to_have_attribute("data-stage", "staging")
    expect(page.get_by_test_id("bundle-scorer-1.0.0")).to_have_attribute("data-stage",
                                                                          "production")
    expect(row).to_contain_text("may not approve")
    page.get_by_test_id("reason-scorer-2.0.0").fill("looks fine to me")
    page.get_by_test_id("approve-scorer-2.0.0").click()
    message = page.get_by_test_id("registry-message")
    expect(message).to_have_attribute("data-status", "403")
    expect(message).to_have_attribute("data-kind", "error")
    expect(message).to_contain_text("Refused by the registry")
    expect(message).to_contain_text("eve has role 'viewer'")
    shot(page, "06-registry-viewer-refused", "#registry")
    assert registry_engine.approvals("scorer@2.0.0") == []
    assert registry_engine.decisions("2.0.0") == []

    # An approver signs in in the same tab and approves with a reason.
    page.get_by_test_id("sign-out").click()
    sign_in(page, reg.tokens["abe"])
    expect(page.get_by_test_id("whoami")).to_have_text("Signed in as abe (approver)")
    expect(row).not_to_contain_text("may not approve")
    page.get_by_test_id("reason-scorer-2.0.0").fill("reviewed the check report")
    page.get_by_test_id("approve-scorer-2.0.0").click()
    expect(message).to_have_attribute("data-kind", "ok")
    expect(message).to_contain_text("Approved scorer 2.0.0 as abe")
    approvals = row.get_by_test_id("approvals")
    expect(approvals).to_contain_text("approved by abe: reviewed the check report")
    expect(row.get_by_test_id("decided")).to_have_text("You approved this version.")
    first_event = page.get_by_test_id("audit-row").first
    expect(first_event).to_have_attribute("data-action", "approve")
    expect(first_event).to_have_attribute("data-actor", "abe")
    page.get_by_test_id("audit-filter").select_option("scorer")  # the model's own history
    expect(page.get_by_test_id("audit-row").filter(has_text="create-user")).to_have_count(0)
    expect(page.get_by_test_id("audit-row").first).to_have_attribute("data-action", "approve")
    expect(page.get_by_test_id("audit-row")).to_have_count(len(reg.admin.history("scorer")))
    shot(page, "07-registry-approved", "#registry")
    shot(page, "08-registry-engine")

    [approval] = registry_engine.approvals("scorer@2.0.0")
    assert (approval["user"], approval["decision"], approval["reason"]) == (
        "abe", "approve", "reviewed the check report")
    assert registry_engine.decisions("2.0.0") == [("abe", "approve")]
    assert reg.admin.show("scorer@2.0.0")["stage"] == "staging"  # approving is not promoting


def test_proxy_forwards_only_the_callers_token_and_only_dashboard_calls(
        registry_engine: RegistryEngine) -> None:
    reg, engine = registry_engine.registry, registry_engine.engine
    api = "/ui/api/registry"
    client = engine.client

    def auth(user: str) -> dict[str, str]:
        return {"authorization": f"Bearer {reg.tokens[user]}"}

    info = client.get(api).json()  # as dana
    assert info == {"url": reg.url, "stage": "production"}
    # The engine reads the registry with eve's token, but never lends it to a caller: a
    # caller without a token is refused before the proxy, and learns no URL.
    with httpx.Client(base_url=engine.url, timeout=30) as anonymous_client:
        for path in (api, f"{api}/whoami", f"{api}/bundles"):
            anonymous = anonymous_client.get(path)
            assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
            assert reg.url not in anonymous.text and "127.0.0.1" not in anonymous.text
    me = client.get(f"{api}/whoami", headers=auth("olga")).json()
    assert (me["name"], me["role"]) == ("olga", "operator")
    listed = client.get(f"{api}/bundles", params={"stage": "production", "junk": "x"},
                        headers=auth("olga")).json()["bundles"]
    assert [(b["version"], b["stage"]) for b in listed] == [("1.0.0", "production")]
    shown = client.get(f"{api}/bundles/scorer/1.0.0", headers=auth("olga")).json()
    assert shown["stage"] == "production" and shown["approvals"]
    assert client.get(f"{api}/history/scorer", headers=auth("olga")).json()["events"]
    assert client.get(f"{api}/audit", headers=auth("olga")).json()["events"]

    refused = client.post(f"{api}/bundles/scorer/2.0.0/reject", json={"reason": "no"},
                          headers=auth("eve"))
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    needs_reason = client.post(f"{api}/bundles/scorer/2.0.0/reject", json={"reason": ""},
                               headers=auth("abe"))
    assert needs_reason.status_code == 400 and needs_reason.json()["code"] == "REASON_REQUIRED"
    assert not [d for d in registry_engine.decisions("2.0.0") if d[1] == "reject"]

    # Anything else the registry offers stays out of reach of the dashboard's proxy.
    for method, path in (("POST", "/bundles/scorer/2.0.0/promote"), ("POST", "/users"),
                         ("GET", "/bundles/scorer/1.0.0/archive"), ("GET", "/health"),
                         ("GET", "/bundles/..%2F..%2Fusers"), ("GET", "/history/.hidden")):
        resp = client.request(method, api + path, headers=auth("olga"))
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["code"] == "NOT_FOUND"
    wrong = client.get(f"{api}/bundles/scorer/2.0.0/approve", headers=auth("abe"))
    assert wrong.status_code == 405 and wrong.json()["details"] == {"allowed": "POST"}
    big = client.post(f"{api}/bundles/scorer/2.0.0/approve", headers=auth("abe"),
                      content=b"x" * (70 * 1024))
    assert big.status_code == 413


def test_registry_view_explains_a_refused_token(registry_engine: RegistryEngine, page: Page,
                                                expected_console: list[str]) -> None:
    from playwright.sync_api import expect

    expected_console += ASKED
    reg = registry_engine.registry
    page.goto(f"{registry_engine.engine.url}/ui")
    give_engine_token(page, reg.tokens["olga"])
    expect(page.get_by_test_id("whoami")).to_have_text("Signed in as olga (operator)")
    page.get_by_test_id("sign-out").click()
    sign_in(page, "bt_not-a-real-token")
    message = page.get_by_test_id("registry-message")
    expect(message).to_have_attribute("data-status", "401")
    expect(message).to_contain_text("The registry did not accept this token")
    expect(page.get_by_test_id("whoami")).to_have_text("")
    # The refused token is forgotten; the engine token stays (the live view goes on).
    assert page.evaluate("sessionStorage.getItem('baton.registry-token')") is None
    assert page.evaluate("sessionStorage.getItem('baton.token')") == reg.tokens["olga"]
    expect(page.get_by_test_id("auth-form")).to_be_hidden()


def test_the_page_asks_for_a_token_and_shows_a_missing_scope(
        registry_engine: RegistryEngine, page: Page, shot: Callable[..., Path],
        expected_console: list[str]) -> None:
    from playwright.sync_api import expect

    expected_console += [*ASKED, "status of 403", "HTTP 403 GET"]
    reg, engine = registry_engine.registry, registry_engine.engine
    shop, _ = reg.process.user("shop", "client")  # infer and feedback: no 'read'
    page.goto(f"{engine.url}/ui")
    form = page.get_by_test_id("auth-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("auth-reason")).to_contain_text("This engine asks for a token")
    expect(page.get_by_test_id("models-table")).not_to_contain_text("scorer")
    expect(page.get_by_test_id("registry-info")).to_be_hidden()
    assert reg.url not in page.content()
    shot(page, "09-engine-token-asked")

    # A garbage token: asked again, with the engine's reason.
    page.get_by_test_id("auth-token").fill("bt_garbage")
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("auth-reason")).to_contain_text(
        "The engine did not accept this token")
    expect(page.get_by_test_id("auth-reason")).to_have_attribute("data-code", "INVALID_TOKEN")

    # A valid token without 'read': a 403 shown as such, not as an engine that is down.
    give_engine_token(page, shop)
    banner = page.get_by_test_id("forbidden-banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("data-status", "403")
    # The calls that were refused, in the order their answers came (any order).
    expect(banner).to_contain_text("This token (scopes: feedback, infer) lacks the 'read' "
                                   "scope that ")
    expect(banner).to_contain_text("/v1/stats")
    expect(page.get_by_test_id("offline-banner")).to_be_hidden()
    expect(page.get_by_test_id("engine-status")).to_have_attribute("data-state", "forbidden")
    assert reg.url not in page.content()
    shot(page, "10-engine-token-lacks-read")

    # Another token: the models, and the registry the engine follows.
    page.get_by_test_id("switch-token").click()
    give_engine_token(page, reg.tokens["eve"])
    expect(page.get_by_test_id("model-row-scorer")).to_contain_text("production")
    expect(banner).to_be_hidden()
    expect(page.get_by_test_id("registry-info")).to_contain_text(reg.url)
    assert "token" not in page.url and shop not in page.url

    # The token never travels in a URL, and the API refuses a caller without one.
    with httpx.Client(base_url=engine.url, timeout=30) as client:
        for headers, code in (({}, "UNAUTHORIZED"),
                              ({"authorization": "Bearer bt_garbage"}, "INVALID_TOKEN")):
            resp = client.get("/ui/api/registry", headers=headers)
            assert resp.status_code == 401 and resp.json()["code"] == code
            assert resp.headers["www-authenticate"] == 'Bearer realm="baton"'
            assert "url" not in resp.json() and reg.url not in resp.text
