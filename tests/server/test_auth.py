"""The route table and the guard on their own: which scope each path needs as the router
reads it, and paths that only resemble an open one."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest

from baton.errors import BatonError
from baton.server.auth import ANY, OPEN, ROUTE_SCOPES, Guard, RouteScopes, bearer
from baton.server.tokens import TokenFile
from tests.security.engines import write_token_file

SCOPE_OF = RouteScopes(ROUTE_SCOPES)


@pytest.mark.parametrize(("path", "scope"), [
    ("/v2/health/live", OPEN), ("/v2/health/live/", OPEN), ("/v2/health/ready", OPEN),
    ("/ui", OPEN), ("/ui/", OPEN), ("/ui/static/main.js", OPEN),
    ("/v2", "infer"), ("/v2/", "infer"), ("/v2/models/m", "infer"),
    ("/v2/models/m/versions/1/infer", "infer"), ("/v1/models/m/predict", "infer"),
    ("/openapi.json", "infer"), ("/v1/models/m/feedback", "feedback"),
    ("/v1/models", "read"), ("/v1/models/", "read"), ("/v1/stats", "read"),
    ("/metrics", "read"), ("/ui/api/registry", "read"), ("/ui/api/registry/whoami", "read"),
    ("/ui/api", "read"),
    # Anything else needs a token before the router says 404.
    ("/", ANY), ("/v1", ANY), ("/v1/models/m", ANY), ("/v1/models/m/predict/x", ANY),
    ("/V1/stats", ANY), ("/v2//health/live", ANY), ("/v2/health/live/x", ANY),
    ("/v2/health", ANY), ("/metrics/x", ANY), ("/uix", ANY), ("/v1/models/m/feedback/", "feedback"),
])
def test_each_path_needs_the_scope_of_its_route(path: str, scope: str) -> None:
    assert SCOPE_OF(path) == scope


def test_bearer_takes_only_a_bearer_token() -> None:
    assert bearer([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer([(b"authorization", b"bearer  abc ")]) == b"abc"
    assert bearer([(b"authorization", b"Basic abc")]) is None
    assert bearer([(b"authorization", b"Bearer")]) is None
    assert bearer([(b"x", b"Bearer abc")]) is None
    assert bearer([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]) == b"a"


def _admit(guard: Guard, path: str, token: str | None) -> str:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"path": path, "method": "GET", "headers": headers}
    try:
        # In a thread of its own: Playwright's sync API may keep a loop running in this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            principal = pool.submit(asyncio.run, guard.admit(scope)).result(30)
    except BatonError as err:
        return f"{err.http_status} {err.code}"
    return principal.name if principal else "open"


def test_the_guard_answers_from_the_token_file(tmp_path: Path) -> None:
    tokens = write_token_file(tmp_path / "t.toml", {"ops": (("read",), None, False),
                                                    "root": (("admin",), None, False)})
    guard = Guard(TokenFile(tmp_path / "t.toml").load())
    assert _admit(guard, "/v2/health/ready", None) == "open"
    assert _admit(guard, "/v1/stats", None) == "401 UNAUTHORIZED"
    assert _admit(guard, "/v1/stats", tokens["ops"]) == "ops"
    assert _admit(guard, "/v2", tokens["ops"]) == "403 FORBIDDEN"
    assert _admit(guard, "/v2", tokens["root"]) == "root"
    assert _admit(guard, "/nowhere", tokens["ops"]) == "ops"  # the router's 404 comes next
    assert _admit(guard, "/v1/stats", "x" * 600) == "401 INVALID_TOKEN"
    assert _admit(guard, "/v1/stats", "bt_é") == "401 INVALID_TOKEN"
    # Without a registry, a registry-looking token is simply unknown here.
    assert _admit(guard, "/v1/stats", "bt_unknown") == "401 INVALID_TOKEN"
