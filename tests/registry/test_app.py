"""The registry's HTTP API on a real uvicorn server: tokens, roles, errors, audit export."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select, text

from baton.registry.auth import PERMISSIONS, TOKEN_PREFIX, hash_token
from baton.registry.models import ROLES, Token, User
from baton.registry.service import Registry

from .conftest import ApiServer, MakeArchive, actor, approve, assert_error, to_staging, unique

Serve = Callable[[Registry], ApiServer]


def add_user(admin: httpx.Client, role: str, name: str | None = None) -> tuple[str, str]:
    """Create a user through the API; return its name and a fresh token."""
    name = name or unique(role)
    resp = admin.post("/users", json={"name": name, "role": role})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"name": name, "role": role}
    resp = admin.post(f"/users/{name}/tokens", json={"days": 1, "label": "tests"})
    assert resp.status_code == 201, resp.text
    return name, resp.json()["token"]


@pytest.fixture
def api(registry: Registry, serve_api: Serve) -> tuple[ApiServer, httpx.Client]:
    server = serve_api(registry)
    return server, server.client(registry.bootstrap_admin(unique("root")))


# -- authentication ----------------------------------------------------------------------------

def test_requests_without_a_valid_token_are_unauthorized(
        registry: Registry, api: tuple[ApiServer, httpx.Client],
        make_archive: MakeArchive) -> None:
    server, admin = api
    name, token = add_user(admin, "data-scientist")
    expired = TOKEN_PREFIX + "expired-" + unique("t")
    with registry.db.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        assert user is not None
        s.add(Token(user_id=user.id, token_hash=hash_token(expired), label="old",
                    expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    archive = make_archive(unique("unauth")).path.read_bytes()
    events = registry.count_events()

    cases = {
        "missing": {}, "empty": {"authorization": "Bearer"},
        "not bearer": {"authorization": f"Basic {token}"},
        "invalid": {"authorization": f"Bearer {token}x"},
        "expired": {"authorization": f"Bearer {expired}"},
    }
    anonymous = server.client()
    for case, headers in cases.items():
        for method, path, body in (("GET", "/whoami", None), ("GET", "/bundles", None),
                                   ("POST", "/bundles", archive), ("GET", "/audit", None)):
            resp = anonymous.request(method, path, headers=headers, content=body)
            err = assert_error(resp, 401, "TOKEN_EXPIRED" if case == "expired"
                               else "UNAUTHORIZED")
            if case == "expired":
                assert "expired" in err["error"]
    assert registry.count_events() == events
    me = server.client(token).get("/whoami").json()
    assert me == {"name": name, "role": "data-scientist",
                  "scopes": ["feedback", "infer", "read"],
                  "token": {"id": me["token"]["id"], "label": "tests", "service": False,
                            "expires_at": me["token"]["expires_at"]}}


def test_tokens_are_stored_only_as_sha256(registry: Registry,
                                          api: tuple[ApiServer, httpx.Client]) -> None:
    _, admin = api
    name, token = add_user(admin, "viewer")
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    with registry.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM tokens")).mappings().all()
    dumped = json.dumps([{k: str(v) for k, v in row.items()} for row in rows])
    assert token not in dumped and token[len(TOKEN_PREFIX):] not in dumped
    assert hashlib.sha256(token.encode()).hexdigest() in {row["token_hash"] for row in rows}


def test_a_token_can_expire(registry: Registry, api: tuple[ApiServer, httpx.Client]) -> None:
    server, admin = api
    name, _ = add_user(admin, "viewer")
    resp = admin.post(f"/users/{name}/tokens", json={"days": 0.5})
    assert resp.status_code == 201 and resp.json()["days"] == 0.5
    with registry.db.session() as s:
        row = s.scalar(select(Token).where(Token.token_hash == hash_token(resp.json()["token"])))
        assert row is not None and row.expires_at is not None
        expires = row.expires_at.replace(tzinfo=row.expires_at.tzinfo or dt.UTC)
    left = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=11) < left <= dt.timedelta(hours=12)
    for days in (0, -1, "1", True):
        assert_error(admin.post(f"/users/{name}/tokens", json={"days": days}), 400,
                     "BAD_REQUEST")


# -- errors as data ----------------------------------------------------------------------------

def test_bad_requests_and_conflicts_have_codes_and_statuses(
        registry: Registry, api: tuple[ApiServer, httpx.Client],
        make_archive: MakeArchive) -> None:
    _, admin = api
    name, ds_token = add_user(admin, "data-scientist")
    ds = api[0].client(ds_token)
    model = unique("errors")
    first = make_archive(model)
    resp = ds.post("/bundles", content=first.path.read_bytes())
    assert resp.status_code == 201 and resp.json()["digest"] == first.digest
    resp = ds.post("/bundles", content=first.path.read_bytes())
    assert resp.status_code == 200 and resp.json()["digest"] == first.digest
    body = assert_error(ds.post("/bundles", content=make_archive(model, variant="x")
                                .path.read_bytes()), 409, "IMMUTABLE_VERSION")
    assert body["details"]["existing"] == first.digest
    assert_error(ds.post("/bundles", content=b""), 400, "EMPTY_REQUEST")
    assert_error(ds.post("/bundles", content=b"not an archive"), 400, "INVALID_BUNDLE")

    assert_error(admin.post("/users", json={"name": unique("u"), "role": "superuser"}), 400,
                 "INVALID_ROLE")
    assert_error(admin.post("/users", json={"name": name, "role": "viewer"}), 409,
                 "USER_EXISTS")
    assert_error(admin.post("/users", content=b"{not json"), 400, "INVALID_JSON")
    assert_error(admin.post("/users", json=["a", "list"]), 400, "BAD_REQUEST")
    assert_error(admin.post(f"/users/{unique('ghost')}/tokens", json={}), 404, "USER_NOT_FOUND")
    ref = f"/bundles/{model}/0.1.0"
    assert_error(admin.post(ref + "/promote", json={"to": "gold"}), 400, "INVALID_STAGE")
    assert_error(admin.post(ref + "/promote", json={"to": "staging"}), 409,
                 "INVALID_TRANSITION")
    assert_error(admin.post(ref + "/approve", json={}), 400, "REASON_REQUIRED")
    assert_error(admin.get(f"/bundles/{model}/9.9"), 404, "BUNDLE_NOT_FOUND")
    assert_error(admin.get(f"/bundles/{unique('none')}"), 404, "BUNDLE_NOT_FOUND")


def test_the_audit_log_exports_as_json_lines(registry: Registry,
                                             api: tuple[ApiServer, httpx.Client],
                                             make_archive: MakeArchive) -> None:
    server, admin = api
    model = unique("audited")
    viewer = server.client(add_user(admin, "viewer")[1])
    ds_name, ds_token = add_user(admin, "data-scientist")
    server.client(ds_token).post("/bundles", content=make_archive(model).path.read_bytes())

    resp = viewer.get("/audit", params={"format": "jsonl"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.text.endswith("\n")
    events = [json.loads(line) for line in resp.text.splitlines()]
    assert events == registry.history(actor("viewer"))
    assert events == viewer.get("/audit").json()["events"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for e in events:
        assert set(e) == {"id", "time", "actor", "action", "name", "version", "digest",
                          "from", "to", "reason", "details", "prev_hash", "hash", "signature"}
        assert dt.datetime.fromisoformat(e["time"]).tzinfo is not None
    push = events[-1]
    assert (push["action"], push["actor"], push["name"], push["to"]) == (
        "push", ds_name, model, "draft")
    assert [e["action"] for e in viewer.get(f"/history/{model}").json()["events"]] == ["push"]


# -- the role matrix -------------------------------------------------------------------------

@dataclass
class Scene:
    """A model with one version ready for each action, pushed by another user."""

    name: str
    other_user: str
    archive: bytes

    def path(self, version: str, suffix: str = "") -> str:
        return f"/bundles/{self.name}/{version}{suffix}"


#: action -> (the permission it needs, None: any role; the request; the status it gives)
ACTIONS: dict[str, tuple[str | None, Callable[[httpx.Client, Scene, str], httpx.Response],
                         int]] = {
    "whoami": (None, lambda c, s, me: c.get("/whoami"), 200),
    "list": ("read", lambda c, s, me: c.get("/bundles", params={"name": s.name}), 200),
    "show": ("read", lambda c, s, me: c.get(s.path("1")), 200),
    "pull archive": ("read", lambda c, s, me: c.get(s.path("1", "/archive")), 200),
    "history": ("read", lambda c, s, me: c.get(f"/history/{s.name}"), 200),
    "push": ("push", lambda c, s, me: c.post("/bundles", content=s.archive), 201),
    "promote to validated": (
        "validate", lambda c, s, me: c.post(s.path("1", "/promote"), json={"to": "validated"}),
        200),
    "promote to staging": (
        "promote", lambda c, s, me: c.post(s.path("2", "/promote"), json={"to": "staging"}),
        200),
    "promote to production": (
        "promote", lambda c, s, me: c.post(s.path("3", "/promote"), json={"to": "production"}),
        200),
    "approve": ("approve", lambda c, s, me: c.post(s.path("4", "/approve"),
                                                   json={"reason": "fine"}), 200),
    "reject": ("approve", lambda c, s, me: c.post(s.path("5", "/reject"),
                                                  json={"reason": "not fine"}), 200),
    "create user": ("admin", lambda c, s, me: c.post("/users", json={
        "name": unique("made"), "role": "viewer"}), 201),
    "create token for another user": (
        "admin", lambda c, s, me: c.post(f"/users/{s.other_user}/tokens", json={}), 201),
    "create token for oneself": (
        "tokens", lambda c, s, me: c.post(f"/users/{me}/tokens", json={}), 201),
    "audit export": ("read", lambda c, s, me: c.get("/audit", params={"format": "jsonl"}),
                     200),
}
MUTATING = {"push", "promote to validated", "promote to staging", "promote to production",
            "approve", "reject", "create user", "create token for another user",
            "create token for oneself"}


def make_scene(registry: Registry, admin: httpx.Client, make_archive: MakeArchive) -> Scene:
    name, author = unique("matrix"), actor("data-scientist")
    for version in "12345":
        registry.push(author, make_archive(name, version).path)
    registry.validate(actor("operator"), f"{name}@2")
    for version in "345":
        to_staging(registry, f"{name}@{version}")
    approve(registry, f"{name}@3")
    other, _ = add_user(admin, "viewer")
    return Scene(name, other, make_archive(name, "6").path.read_bytes())


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(role: str, registry: Registry, api: tuple[ApiServer, httpx.Client],
                     make_archive: MakeArchive) -> None:
    server, admin = api
    scene = make_scene(registry, admin, make_archive)
    me, token = add_user(admin, role)
    client = server.client(token)
    outcome: dict[str, int] = {}
    for action, (permission, call, status) in ACTIONS.items():
        events = registry.count_events()
        resp = call(client, scene, me)
        outcome[action] = resp.status_code
        allowed = permission is None or role in PERMISSIONS[permission]
        if allowed:
            assert resp.status_code == status, (action, resp.text)
        else:
            body = assert_error(resp, 403, "FORBIDDEN")
            assert body["details"] == {"role": role, "permission": permission}, action
        written = registry.count_events() - events
        assert written == (1 if allowed and action in MUTATING else 0), action

    stages = {b["version"]: b["stage"] for b in registry.list(actor("viewer"), scene.name)}
    may = {p for p, roles in PERMISSIONS.items() if role in roles}
    assert stages == {
        "1": "validated" if "validate" in may else "draft",
        "2": "staging" if "promote" in may else "validated",
        "3": "production" if "promote" in may else "staging",
        "4": "staging", "5": "staging",
        **({"6": "draft"} if "push" in may else {})}
    decisions = {v: [a["decision"] for a in registry.show(actor("viewer"),
                                                          f"{scene.name}@{v}")["approvals"]]
                 for v in "45"}
    assert decisions == ({"4": ["approve"], "5": ["reject"]} if "approve" in may
                         else {"4": [], "5": []})
    # Every role but client reads; only admins manage users: this role's matrix at a glance.
    assert [a for a, s in outcome.items() if s == 403] == [
        a for a, (p, _, _) in ACTIONS.items() if p is not None and role not in PERMISSIONS[p]]


def test_read_routes_serve_what_the_service_holds(registry: Registry,
                                                  api: tuple[ApiServer, httpx.Client],
                                                  make_archive: MakeArchive) -> None:
    server, admin = api
    viewer = server.client(add_user(admin, "viewer")[1])
    name = unique("read")
    built = make_archive(name)
    registry.push(actor("data-scientist"), built.path)
    resp = viewer.get(f"/bundles/{name}/0.1.0/archive")
    assert resp.status_code == 200 and resp.content == built.path.read_bytes()
    assert resp.headers["x-baton-digest"] == built.digest
    assert f"{name}-0.1.0.baton" in resp.headers["content-disposition"]
    assert viewer.get(f"/bundles/{name}/{built.digest}").json()["version"] == "0.1.0"
    assert viewer.get(f"/bundles/{name}").json() == registry.show(actor("viewer"), name)
    listed = viewer.get("/bundles", params={"name": name, "stage": "draft"}).json()["bundles"]
    assert [b["digest"] for b in listed] == [built.digest]
    assert viewer.get("/bundles", params={"name": name, "stage": "production"}).json() == {
        "bundles": []}
    assert server.client().get("/health").json() == {"ok": True}
