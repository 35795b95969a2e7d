"""Tokens an admin can govern, through the registry's HTTP API on a real server: lifetime
limits, service tokens, scopes, listing, revocation, last use, and errors as JSON."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from baton.errors import Conflict
from baton.registry.auth import hash_token
from baton.registry.db import MIGRATIONS, Database
from baton.registry.models import Token
from baton.registry.service import Registry

from .conftest import ApiServer, MakeRegistry, assert_error, new_pg_database, unique
from .test_cli import Cli, RegistryProcess, cli, registry_process  # noqa: F401  (fixtures)

Serve = Callable[[Registry], ApiServer]
MAX_DAYS = 10


class Api:
    """A registry capped at MAX_DAYS on a real server, with an admin client."""

    def __init__(self, registry: Registry, server: ApiServer) -> None:
        self.registry, self.server = registry, server
        self.admin = server.client(registry.bootstrap_admin(unique("root")))

    def user(self, role: str, name: str | None = None) -> tuple[str, httpx.Client, str]:
        """A new user with a one-day token: name, a client holding it, the token."""
        name = name or unique(role)
        assert self.admin.post("/users", json={"name": name, "role": role}).status_code == 201
        resp = self.admin.post(f"/users/{name}/tokens", json={"days": 1, "label": "setup"})
        assert resp.status_code == 201, resp.text
        token = resp.json()["token"]
        return name, self.server.client(token), token

    def row(self, token: str) -> Token:
        with self.registry.db.session() as s:
            row = s.scalar(select(Token).where(Token.token_hash == hash_token(token)))
            assert row is not None
            return row


@pytest.fixture
def api(make_registry: MakeRegistry, serve_api: Serve) -> Api:
    registry = make_registry(token_max_days=MAX_DAYS)
    return Api(registry, serve_api(registry))


def _days_left(expires_at: str) -> float:
    return (dt.datetime.fromisoformat(expires_at) - dt.datetime.now(dt.UTC)).total_seconds() \
        / 86400


# -- lifetime ----------------------------------------------------------------------------------

def test_users_get_at_most_the_maximum_lifetime(api: Api) -> None:
    name, me, _ = api.user("data-scientist")
    made = me.post(f"/users/{name}/tokens", json={}).json()
    assert made["service"] is False and MAX_DAYS - 0.01 < _days_left(made["expires_at"]) <= MAX_DAYS
    assert me.post(f"/users/{name}/tokens", json={"days": MAX_DAYS}).status_code == 201
    for days in (MAX_DAYS + 0.5, None, 1e9):
        body = assert_error(me.post(f"/users/{name}/tokens", json={"days": days}), 400,
                            "TOKEN_TOO_LONG")
        assert body["details"] == {"field": "days", "limit": MAX_DAYS}
    # An admin is held to the maximum too, unless it asks for a service token.
    assert_error(api.admin.post(f"/users/{name}/tokens", json={"days": 30}), 400,
                 "TOKEN_TOO_LONG")


def test_only_admins_issue_service_tokens_which_may_outlive_the_maximum(api: Api) -> None:
    name, me, _ = api.user("operator")
    body = assert_error(me.post(f"/users/{name}/tokens", json={"service": True, "days": 1}),
                        403, "FORBIDDEN")
    assert body["details"] == {"role": "operator", "permission": "admin"}
    forever = api.admin.post(f"/users/{name}/tokens",
                             json={"service": True, "days": None, "label": "ci"}).json()
    assert forever["service"] is True and forever["expires_at"] is None
    yearly = api.admin.post(f"/users/{name}/tokens", json={"service": True, "days": 365})
    assert yearly.status_code == 201 and 364 < _days_left(yearly.json()["expires_at"]) <= 365
    assert_error(api.admin.post(f"/users/{name}/tokens", json={"service": True, "days": 1e9}),
                 400, "BAD_REQUEST")
    # Labelled as a service token wherever a token is shown.
    service = api.server.client(forever["token"])
    assert service.get("/whoami").json()["token"] == {
        "id": forever["id"], "label": "ci", "expires_at": None, "service": True}
    listed = {t["id"]: t for t in me.get("/tokens").json()["tokens"]}
    assert listed[forever["id"]]["service"] is True and listed[forever["id"]]["expires_at"] is None
    (event,) = [e for e in api.admin.get("/audit").json()["events"]
                if e["action"] == "create-token" and e["details"]["token_id"] == forever["id"]]
    assert event["details"]["service"] is True and event["details"]["days"] is None


def test_only_admins_issue_tokens_to_others_and_names_ignore_case(api: Api) -> None:
    name, me, _ = api.user("data-scientist", unique("Dora"))
    other, _, _ = api.user("viewer")
    body = assert_error(me.post(f"/users/{other}/tokens", json={"days": 1}), 403, "FORBIDDEN")
    assert body["details"]["permission"] == "admin"
    own = me.post(f"/users/{name.upper()}/tokens", json={"days": 1})  # oneself, another case
    assert own.status_code == 201 and own.json()["user"] == name
    made = api.admin.post(f"/users/{other.upper()}/tokens", json={"days": 1}).json()
    assert made["user"] == other
    assert_error(api.admin.post(f"/users/{unique('ghost')}/tokens", json={}), 404,
                 "USER_NOT_FOUND")


# -- scopes and the client role ----------------------------------------------------------------

@pytest.mark.parametrize(("role", "scopes"), [
    ("client", ["feedback", "infer"]), ("viewer", ["read"]),
    ("data-scientist", ["feedback", "infer", "read"]), ("operator", ["infer", "read"]),
    ("approver", ["read"]), ("admin", ["admin", "feedback", "infer", "read"]),
])
def test_tokens_carry_their_roles_scopes_by_default(api: Api, role: str,
                                                    scopes: list[str]) -> None:
    name, me, token = api.user(role)
    assert me.get("/whoami").json() == {
        "name": name, "role": role, "scopes": scopes,
        "token": {"id": api.row(token).id, "label": "setup", "service": False,
                  "expires_at": me.get("/whoami").json()["token"]["expires_at"]}}


def test_a_creator_may_narrow_scopes_but_never_widen_them(api: Api) -> None:
    name, me, _ = api.user("data-scientist")
    narrow = me.post(f"/users/{name}/tokens", json={"days": 1, "scopes": ["infer"]}).json()
    assert narrow["scopes"] == ["infer"]
    assert api.server.client(narrow["token"]).get("/whoami").json()["scopes"] == ["infer"]
    body = assert_error(me.post(f"/users/{name}/tokens", json={"scopes": ["infer", "admin"]}),
                        400, "SCOPE_NOT_ALLOWED")
    assert body["details"] == {"field": "scopes", "allowed": ["feedback", "infer", "read"]}
    assert_error(api.admin.post(f"/users/{name}/tokens", json={"scopes": ["admin"]}), 400,
                 "SCOPE_NOT_ALLOWED")  # not even an admin gives a role more than it holds
    body = assert_error(me.post(f"/users/{name}/tokens", json={"scopes": ["predict"]}), 400,
                        "INVALID_SCOPE")
    assert body["details"]["field"] == "scopes"
    for bad in ("infer", [1], {"infer": True}):
        body = assert_error(me.post(f"/users/{name}/tokens", json={"scopes": bad}), 400,
                            "BAD_REQUEST")
        assert body["details"] == {"field": "scopes"}


def test_a_client_may_only_ask_who_it_is(api: Api) -> None:
    name, client, _ = api.user("client")
    assert client.get("/whoami").json()["scopes"] == ["feedback", "infer"]
    for resp in (client.get("/bundles"), client.get("/audit"), client.get("/tokens"),
                 client.post(f"/users/{name}/tokens", json={"days": 1})):
        assert assert_error(resp, 403, "FORBIDDEN")["details"]["role"] == "client"


# -- every value is checked --------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field", "code"), [
    ({"days": "1"}, "days", "BAD_REQUEST"),
    ({"days": True}, "days", "BAD_REQUEST"),
    ({"days": 0}, "days", "BAD_REQUEST"),
    ({"days": [1]}, "days", "BAD_REQUEST"),
    ({"service": "yes"}, "service", "BAD_REQUEST"),
    ({"label": 7}, "label", "BAD_REQUEST"),
    ({"label": "x" * 101}, "label", "BAD_REQUEST"),
    ({"label": "line\nbreak"}, "label", "BAD_REQUEST"),
    ({"expires": "never"}, "expires", "UNKNOWN_FIELD"),
])
def test_bad_values_are_400_with_the_field(api: Api, body: dict[str, Any], field: str,
                                           code: str) -> None:
    name, me, _ = api.user("viewer")
    before = api.registry.count_events()
    err = assert_error(me.post(f"/users/{name}/tokens", json=body), 400, code)
    assert err["details"]["field"] == field
    assert api.registry.count_events() == before


def test_routes_and_failures_answer_json_never_plain_text(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    _, me, _ = api.user("viewer")
    assert_error(me.get("/no-such-route"), 404, "NOT_FOUND")
    assert_error(me.put("/tokens"), 405, "METHOD_NOT_ALLOWED")
    assert_error(me.delete("/tokens/abc"), 400, "BAD_REQUEST")
    body = assert_error(api.admin.post("/users", json={"name": unique("u"), "role": "viewer",
                                                       "admin": True}), 400, "UNKNOWN_FIELD")
    assert body["details"] == {"field": "admin"}

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug no real component produces on demand")

    monkeypatch.setattr(api.registry, "list", broken)
    resp = me.get("/bundles")
    assert_error(resp, 500, "INTERNAL_ERROR")
    assert "a bug" not in resp.text  # the details are in the server's log, not the answer


# -- listing, revocation, last use -------------------------------------------------------------

def test_tokens_list_without_secrets_and_by_whom(api: Api) -> None:
    name, me, token = api.user("approver")
    other, them, other_token = api.user("viewer")
    mine = me.get("/tokens").json()["tokens"]
    assert [t["user"] for t in mine] == [name]
    assert set(mine[0]) == {"id", "user", "label", "scopes", "service", "status",
                            "created_at", "created_by", "expires_at", "last_used_at",
                            "revoked_at", "revoked_by"}
    assert mine[0]["status"] == "active" and mine[0]["created_by"] == \
        api.admin.get("/whoami").json()["name"]
    assert me.get("/tokens", params={"user": name.upper()}).json()["tokens"] == mine
    assert_error(me.get("/tokens", params={"user": other}), 403, "FORBIDDEN")
    assert_error(me.get("/tokens", params={"all": "1"}), 403, "FORBIDDEN")
    theirs = api.admin.get("/tokens", params={"user": other}).json()["tokens"]
    assert [t["user"] for t in theirs] == [other]
    everyone = api.admin.get("/tokens", params={"all": "1"})
    assert {name, other} <= {t["user"] for t in everyone.json()["tokens"]}
    shown = everyone.text + them.get("/tokens").text + them.get("/audit").text
    for secret in (token, other_token, hash_token(token), hash_token(other_token)):
        assert secret not in shown


def test_revocation_own_or_by_an_admin_is_audited_and_final(api: Api) -> None:
    name, me, token = api.user("operator")
    other, them, other_token = api.user("viewer")
    own_id, other_id = api.row(token).id, api.row(other_token).id
    body = assert_error(me.delete(f"/tokens/{other_id}"), 403, "FORBIDDEN")
    assert body["details"]["permission"] == "admin"
    assert them.get("/whoami").status_code == 200

    events = api.registry.count_events()
    revoked = me.delete(f"/tokens/{own_id}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert revoked.json()["revoked_by"] == name
    assert api.registry.count_events() == events + 1
    err = assert_error(me.get("/whoami"), 401, "TOKEN_REVOKED")
    assert str(own_id) in err["error"]

    assert api.admin.delete(f"/tokens/{other_id}").status_code == 200
    assert_error(them.get("/bundles"), 401, "TOKEN_REVOKED")
    assert_error(api.admin.delete(f"/tokens/{other_id}"), 409, "TOKEN_ALREADY_REVOKED")
    assert_error(api.admin.delete("/tokens/999999999"), 404, "TOKEN_NOT_FOUND")
    event = api.admin.get("/audit").json()["events"][-1]  # the 409 and 404 left none
    assert (event["action"], event["details"]["token_id"], event["details"]["user"]) == (
        "revoke-token", other_id, other)


def test_last_use_is_recorded_at_most_once_a_minute(api: Api) -> None:
    _, me, token = api.user("viewer")
    assert api.row(token).last_used_at is None  # issuing is not using
    me.get("/whoami")
    first = api.row(token).last_used_at
    assert first is not None
    me.get("/whoami")
    assert api.row(token).last_used_at == first  # within the minute: no write
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    with api.registry.db.session() as s:
        s.execute(update(Token).where(Token.token_hash == hash_token(token))
                  .values(last_used_at=long_ago))
    me.get("/whoami")
    later = api.row(token).last_used_at
    assert later is not None and later.replace(tzinfo=later.tzinfo or dt.UTC) > long_ago
    listed = me.get("/tokens").json()["tokens"][0]["last_used_at"]
    assert dt.datetime.fromisoformat(listed) > long_ago


def test_expired_tokens_are_refused_with_their_code(api: Api) -> None:
    _, me, token = api.user("viewer")
    with api.registry.db.session() as s:
        s.execute(text("UPDATE tokens SET expires_at = :t WHERE token_hash = :h"),
                  {"t": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
                   "h": hash_token(token)})
    assert_error(me.get("/whoami"), 401, "TOKEN_EXPIRED")
    listed = api.admin.get("/tokens", params={"user": api.row(token).user.name})
    assert listed.json()["tokens"][0]["status"] == "expired"


# -- user names ---------------------------------------------------------------------------------

@pytest.fixture
def blank_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database on this module's back end, for migrating by hand."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with new_pg_database() as url:
        yield url


def test_case_variant_users_stop_the_migration_until_resolved(blank_database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    db = Database(blank_database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")  # a registry from before user names ignored case
        add = text("INSERT INTO users (name, role, created_at, disabled) "
                   "VALUES (:name, 'viewer', CURRENT_TIMESTAMP, false)")
        with db.engine.begin() as conn:
            for name in ("alice", "Alice", "bob", "BOB", "Bob", "carol"):
                conn.execute(add, {"name": name})
        with pytest.raises(Conflict) as err:
            db.migrate()
        assert err.value.code == "USER_NAME_CASE_DUPLICATES"
        assert err.value.details == {"users": [["Alice", "alice"], ["BOB", "Bob", "bob"]]}
        assert "Alice, alice; BOB, Bob, bob" in err.value.message
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM users WHERE name IN ('Alice', 'BOB', 'Bob')"))
        db.migrate()
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(add, {"name": "CAROL"})
    finally:
        db.dispose()


# -- through the CLI, against a real `baton registry serve` --------------------------------------

def test_tokens_through_the_cli(registry_process: RegistryProcess,  # noqa: F811
                                cli: Cli) -> None:  # noqa: F811
    cli("login", registry_process.url, "--token", registry_process.admin_token)
    app, ds = unique("app"), unique("ds")
    cli("users", "create", app, "--role", "client")
    cli("users", "create", ds, "--role", "data-scientist")

    r = cli("tokens", "create", app, "--scope", "infer", "--label", "checkout")
    token = r.stdout.strip()
    assert token.startswith("bt_") and "\n" not in token  # stdout: the token, nothing else
    assert re.fullmatch(rf"token \d+ for {app}, scopes infer, expires 20\S+\n", r.stderr)
    r = cli("tokens", "create", app, "--days", "400", code=2)
    assert "TOKEN_TOO_LONG" in r.stderr and "90 days" in r.stderr
    r = cli("tokens", "create", app, "--service", "--no-expiry", "--label", "batch")
    assert re.fullmatch(rf"service token \d+ for {app}, scopes feedback, infer, "
                        r"expires never\n", r.stderr)
    service = r.stdout.strip()
    alias = cli("users", "token", ds, "--days", "1").stdout.strip()

    lines = cli("tokens", "list", "--user", app).stdout.splitlines()
    assert [(line.split()[1:4], line.split()[-1]) for line in lines] == [
        ([app, "user", "active"], "checkout"), ([app, "service", "active"], "batch")]
    assert "never" in lines[1]
    listed = json.loads(cli("tokens", "list", "--all", "--json").stdout)
    assert {app, ds} <= {t["user"] for t in listed}
    for secret in (token, service, alias):
        assert secret not in json.dumps(listed)

    # A data scientist manages its own tokens only.
    own = json.loads(cli("tokens", "list", "--json", token=alias).stdout)
    assert [t["user"] for t in own] == [ds]
    assert "FORBIDDEN" in cli("tokens", "list", "--all", token=alias, code=6).stderr
    admin_token_id = next(t["id"] for t in listed if t["user"] == "root")
    r = cli("tokens", "revoke", str(admin_token_id), token=alias, code=6)
    assert "FORBIDDEN" in r.stderr
    assert "FORBIDDEN" in cli("tokens", "create", app, "--days", "1", token=alias,
                              code=6).stderr

    r = cli("tokens", "revoke", str(own[0]["id"]), token=alias)
    assert r.stdout == f"revoked token {own[0]['id']} of {ds} (no label)\n"
    r = cli("list", token=alias, code=6)
    assert "TOKEN_REVOKED" in r.stderr
    assert "Traceback" not in r.stderr


def test_login_pins_the_registry_key_it_was_given(
        registry_process: RegistryProcess, cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    url, admin = registry_process.url, registry_process.admin_token
    shown = httpx.get(url + "/api/v1/key").json()
    other = "ed25519:" + base64.b64encode(b"\x01" * 32).decode()
    r = cli("login", url, "--token", admin, "--registry-key", other, code=6)
    assert "REGISTRY_KEY_MISMATCH" in r.stderr and shown["key_id"] in r.stderr
    assert not cli.config.exists()  # nothing saved

    key_file = tmp_path / "registry.pub"
    key_file.write_text(shown["key"] + "\n")
    for pinned in ([], ["--registry-key", shown["key"]], ["--registry-key", str(key_file)]):
        r = cli("login", url, "--token", admin, *pinned)
        assert r.stdout.splitlines()[1] == (
            f"registry key {shown['key_id']}: {shown['key']} (pin it on engines with "
            "--registry-key)")
        saved = tomllib.loads(cli.config.read_text())["registry"]
        assert saved == {"url": url, "token": admin, "key": shown["key"]}
