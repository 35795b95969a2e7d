"""The route table on its own and through the ASGI app in-process: how paths resolve, the
uniform 404 and 405, and the scopes the guard reads from the same table."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import orjson
import pytest

from baton.server.app import BatonApp
from baton.server.auth import ANY, ROUTE_SCOPES, RouteScopes
from baton.server.handlers import ENGINE_ROUTES
from baton.server.openapi import model_path
from baton.serving.service import Engine
from baton.settings import Settings

Answer = tuple[int, dict[str, str], dict[str, Any]]


def call(method: str, path: str) -> Answer:
    """One request to an engine serving no model: status, headers and JSON body."""
    app = BatonApp(Engine([], Settings.from_env({})), max_body_bytes=1024)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "headers": [],
             "server": ("127.0.0.1", 8000)}
    # In a thread of its own: Playwright's sync API may keep a loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result(60)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, orjson.loads(sent[1]["body"])


def sample_paths() -> list[tuple[str, str]]:
    """(path, scope) of every route, model routes for model m (and version 1)."""
    out = [(r.path, r.scope) for r in ENGINE_ROUTES.static.values()]
    for fam in ENGINE_ROUTES.families:
        for r in fam.routes:
            out += [(model_path(fam, "m", v, r.path), r.scope)
                    for v in ((None, "1") if fam.versions else (None,))]
    return out


@pytest.mark.parametrize(("path", "scope"), sample_paths())
def test_the_guard_asks_each_route_for_the_scope_the_table_gives_it(path: str,
                                                                    scope: str) -> None:
    assert RouteScopes(ROUTE_SCOPES)(path) == scope


@pytest.mark.parametrize("route", list(ENGINE_ROUTES.static.values()), ids=lambda r: r.path)
def test_a_static_route_asked_with_another_method_is_405_naming_its_methods(route: Any) -> None:
    status, headers, body = call("DELETE", route.path)
    assert status == 405 and body["code"] == "METHOD_NOT_ALLOWED"
    assert headers["allow"] == ", ".join(route.methods) == body["details"]["allowed"]


def test_model_routes_resolve_with_their_model_and_version() -> None:
    match = ENGINE_ROUTES.resolve("/v2/models/m/versions/2/infer")
    assert match is not None and match.route is not None
    assert (match.route.path, match.name, match.version) == ("infer", "m", "2")
    match = ENGINE_ROUTES.resolve("/v1/models/m/feedback")
    assert match is not None and match.route is not None
    assert (match.route.path, match.name, match.version) == ("feedback", "m", None)
    # v1 has no version paths; a family's unknown tail is the family's miss.
    miss = ENGINE_ROUTES.resolve("/v1/models/m/versions/2/predict")
    assert miss is not None and miss.route is None
    assert ENGINE_ROUTES.resolve("/v3/models/m/infer") is None


def test_a_v2_model_path_names_an_unknown_model_before_its_method() -> None:
    status, _, body = call("DELETE", "/v2/models/nope/infer")
    assert (status, body["code"]) == (404, "MODEL_NOT_FOUND")
    status, headers, body = call("GET", "/v1/models/nope/predict")
    assert (status, body["code"], headers["allow"]) == (405, "METHOD_NOT_ALLOWED", "POST")
    status, _, body = call("POST", "/v1/models/nope/predict")
    assert (status, body["code"]) == (404, "MODEL_NOT_FOUND")


@pytest.mark.parametrize(("path", "message"), [
    ("/nowhere", "no route GET /nowhere; see /openapi.json"),
    ("/v1/models/m", "no route GET /v1/models/m; see /openapi.json"),
    ("/v1/models/m/predict/x", "no route GET /v1/models/m/predict/x; see /openapi.json"),
    ("/v2/health", "no route GET /v2/health"), ("/v2/models/", "no route GET /v2/models"),
])
def test_an_unknown_path_is_the_same_json_404(path: str, message: str) -> None:
    status, headers, body = call("GET", path)
    assert (status, body) == (404, {"error": message, "code": "NOT_FOUND"})
    assert headers["content-type"] == "application/json" and "allow" not in headers


@pytest.mark.parametrize("path", ["//v1/models", "//v2", "//v1/models/m/feedback"])
def test_a_path_the_guard_does_not_scope_is_not_routed(path: str) -> None:
    """The router reads paths as the guard does: a doubled slash is no way around a scope."""
    assert RouteScopes(ROUTE_SCOPES)(path) == ANY
    assert call("GET", path)[0] == 404
