"""Issue 9, registry identity: the breaks an attacker with a viewer token found, each
reproduced first (every test here failed before the fix), on SQLite and PostgreSQL.

- any user, even a viewer, could mint themselves a token that never expires;
- tokens could not be listed or revoked;
- ``days`` of 1e9 gave a plain-text 500;
- users ``Alice`` and ``alice`` could both exist.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from baton.registry.service import Registry
from tests.registry.conftest import (  # noqa: F401  (fixtures used by name)
    ApiServer,
    assert_error,
    database_url,
    key_file,
    make_registry,
    open_database,
    registry,
    serve_api,
    signing_key,
    unique,
)

Serve = Callable[[Registry], ApiServer]


@pytest.fixture
def api(registry: Registry, serve_api: Serve) -> tuple[ApiServer, httpx.Client]:  # noqa: F811
    server = serve_api(registry)
    return server, server.client(registry.bootstrap_admin(unique("root")))


def add_user(admin: httpx.Client, role: str, name: str | None = None) -> tuple[str, str]:
    name = name or unique(role)
    assert admin.post("/users", json={"name": name, "role": role}).status_code == 201
    resp = admin.post(f"/users/{name}/tokens", json={"days": 1})
    assert resp.status_code == 201, resp.text
    return name, resp.json()["token"]


def test_a_viewer_cannot_mint_itself_a_token_that_never_expires(
        api: tuple[ApiServer, httpx.Client]) -> None:
    server, admin = api
    name, token = add_user(admin, "viewer")
    viewer = server.client(token)
    body = assert_error(viewer.post(f"/users/{name}/tokens", json={"days": None}), 400,
                        "TOKEN_TOO_LONG")
    assert body["details"]["field"] == "days" and body["details"]["limit"] == 90
    assert_error(viewer.post(f"/users/{name}/tokens", json={"days": 91}), 400,
                 "TOKEN_TOO_LONG")
    body = assert_error(viewer.post(f"/users/{name}/tokens",
                                    json={"days": None, "service": True}), 403, "FORBIDDEN")
    listed = viewer.get("/tokens").json()["tokens"]
    assert [t["expires_at"] is not None for t in listed] == [True]  # only the admin's one


@pytest.mark.parametrize("days", [1e9, 1e308, "NaN", "Infinity", -1e9])
def test_absurd_days_are_a_json_400_not_a_plain_text_500(
        api: tuple[ApiServer, httpx.Client], days: float | str) -> None:
    server, admin = api
    name, token = add_user(admin, "viewer")
    # JSON has no NaN or Infinity, but Python's parser accepts them: send them raw.
    raw = f'{{"days": {days}}}' if isinstance(days, str) else None
    for client, service in ((server.client(token), False), (admin, True)):
        if raw is not None:
            resp = client.post(f"/users/{name}/tokens", content=raw.replace(
                "}", f', "service": {str(service).lower()}}}'),
                headers={"content-type": "application/json"})
        else:
            resp = client.post(f"/users/{name}/tokens", json={"days": days,
                                                              "service": service})
        assert resp.status_code == 400, resp.text
        assert resp.headers["content-type"] == "application/json"
        body = resp.json()
        assert body["details"]["field"] == "days" and body["code"] and body["error"]


def test_tokens_can_be_listed_and_revoked(api: tuple[ApiServer, httpx.Client]) -> None:
    server, admin = api
    name, token = add_user(admin, "data-scientist")
    own = server.client(token)
    listed = own.get("/tokens")
    assert listed.status_code == 200, listed.text
    (entry,) = listed.json()["tokens"]
    assert entry["user"] == name and token not in listed.text
    resp = own.delete(f"/tokens/{entry['id']}")
    assert resp.status_code == 200, resp.text
    assert_error(own.get("/whoami"), 401, "TOKEN_REVOKED")


def test_user_names_are_unique_whatever_their_case(api: tuple[ApiServer, httpx.Client],
                                                   registry: Registry) -> None:  # noqa: F811
    _, admin = api
    name = unique("alice")
    assert admin.post("/users", json={"name": name, "role": "viewer"}).status_code == 201
    for variant in (name.upper(), name.capitalize()):
        assert_error(admin.post("/users", json={"name": variant, "role": "admin"}), 409,
                     "USER_EXISTS")
