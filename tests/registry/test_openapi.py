"""The registry's API surface on a real server: its OpenAPI document covers exactly the
routes it serves, unknown routes and methods get JSON errors (405 with ``Allow``), and the
audit log pages with a cursor that exports the whole log."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.routing import Route

from baton.registry.app import create_app
from baton.registry.client import RegistryClient
from baton.registry.openapi import AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, openapi_document
from baton.registry.service import Registry

from .conftest import ApiServer, assert_error, unique
from .test_app import Serve, add_user


@pytest.fixture
def api(registry: Registry, serve_api: Serve) -> tuple[ApiServer, httpx.Client]:
    server = serve_api(registry)
    return server, server.client(registry.bootstrap_admin(unique("root")))


def served_operations(registry: Registry) -> set[tuple[str, str]]:
    """(path, method) of every route the app serves (HEAD comes with GET)."""
    return {(r.path, m.lower()) for r in create_app(registry).routes if isinstance(r, Route)
            for m in (r.methods or ()) if m != "HEAD"}


def test_the_document_covers_every_route_and_nothing_else(registry: Registry) -> None:
    doc = openapi_document()
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served_operations(registry)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_the_document_is_served_without_a_token(api: tuple[ApiServer, httpx.Client]) -> None:
    server, _ = api
    resp = server.client().get("/openapi.json")
    assert resp.status_code == 200 and resp.json() == json.loads(json.dumps(openapi_document()))
    assert resp.json()["components"]["schemas"]["Stage"]["enum"][0] == "draft"


def test_each_route_asks_for_a_token_as_documented(api: tuple[ApiServer, httpx.Client]) -> None:
    server, _ = api
    anonymous = server.client()
    for path, ops in openapi_document()["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: "7" if m[1] == "token_id" else "nope",
                          path.removeprefix("/api/v1"))
        for method, op in ops.items():
            resp = anonymous.request(method.upper(), concrete)
            if op["x-baton-permission"] == "open":
                assert resp.status_code == 200, (method, path, resp.text)
            else:
                assert_error(resp, 401, "UNAUTHORIZED")


def test_unknown_routes_and_methods_get_json_errors(api: tuple[ApiServer, httpx.Client]) -> None:
    _, admin = api
    body = assert_error(admin.get("/no/such/route"), 404, "NOT_FOUND")
    assert "/api/v1/openapi.json" in body["error"]
    for method, path, allow in [("DELETE", "/bundles", "GET, HEAD, POST"),
                                ("PUT", "/audit", "GET, HEAD"),
                                ("GET", "/users", "POST"),
                                ("POST", "/tokens/3", "DELETE")]:
        resp = admin.request(method, path)
        assert_error(resp, 405, "METHOD_NOT_ALLOWED")
        assert resp.headers["allow"] == allow, (method, path)
        assert resp.json()["details"]["allowed"] == allow


def test_the_audit_log_pages_with_a_cursor(registry: Registry,
                                           api: tuple[ApiServer, httpx.Client]) -> None:
    server, admin = api
    for _ in range(5):
        add_user(admin, "viewer")  # two events each: the user, the token
    everything = registry.history(registry.authenticate(
        admin.headers["authorization"].split()[1]))
    assert len(everything) >= 10

    pages, after = [], 0
    while True:
        page = admin.get("/audit", params={"limit": 3, "after": after}).json()
        assert len(page["events"]) <= 3 and page["head"] is not None
        pages.append(page["events"])
        if page["next"] is None:
            break
        assert page["next"] == page["events"][-1]["id"]
        after = page["next"]
    assert [e for p in pages for e in p] == everything
    assert all(len(p) == 3 for p in pages[:-1])

    first = admin.get("/audit").json()
    assert first["events"] == everything[:AUDIT_PAGE_DEFAULT]
    lines = admin.get("/audit", params={"format": "jsonl", "limit": 4})
    assert [json.loads(x) for x in lines.text.splitlines()] == everything[:4]
    assert lines.headers["x-next-after"] == str(everything[3]["id"])
    last = admin.get("/audit", params={"format": "jsonl", "after": everything[-2]["id"]})
    assert "x-next-after" not in last.headers and json.loads(last.text) == everything[-1]
    newest = admin.get("/audit", params={"last": 4}).json()  # what the dashboard shows
    assert newest["events"] == everything[-4:] and newest["next"] is None


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": str(AUDIT_PAGE_MAX + 1)}, "limit"),
    ({"limit": "ten"}, "limit"), ({"after": "-1"}, "after"), ({"format": "xml"}, "format"),
    ({"last": "0"}, "last"), ({"last": "5", "after": "1"}, "last")])
def test_bad_audit_paging_is_a_400_naming_the_parameter(api: tuple[ApiServer, httpx.Client],
                                                         params: dict[str, str],
                                                         field: str) -> None:
    _, admin = api
    body = assert_error(admin.get("/audit", params=params), 400, "BAD_REQUEST")
    assert body["details"]["field"] == field and repr(field) in body["error"]


def test_the_client_exports_the_whole_log_page_by_page(
        registry: Registry, api: tuple[ApiServer, httpx.Client]) -> None:
    server, admin = api
    for _ in range(3):
        add_user(admin, "viewer")
    token = admin.headers["authorization"].split()[1]
    everything = registry.history(registry.authenticate(token))
    client = RegistryClient(server.url, token)
    try:
        exported = [json.loads(x) for x in client.audit_jsonl(page=2).splitlines()]
        assert exported == everything
        whole = client.audit(page=2)
        assert whole["events"] == everything and whole["head"] is not None
        assert client.audit() == whole  # one page of the default size
    finally:
        client.close()
