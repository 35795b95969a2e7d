"""Who may call the registry: users, their roles, and the API tokens an admin governs.

A token is random, shown once and stored as its sha256. It carries engine scopes
(:mod:`baton.scopes`): its user's role's, or fewer named at creation. Users ask for tokens
of at most ``token_max_days`` (the operator's setting); only an admin issues *service*
tokens, which may live longer or never expire, and only an admin issues tokens to someone
else. Tokens can be listed and revoked; every creation and revocation is audited.

Authentication is one indexed query (token hash, joined with its user); it writes the
token's ``last_used_at`` at most once a minute, so engines that verify callers' tokens
through ``/api/v1/whoami`` keep the registry's database mostly read-only.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.errors import Conflict, NotFound, RequestError, Unauthorized
from baton.registry.auth import LAST_USED_EVERY, MAX_DAYS, expiry, hash_token, new_token, require
from baton.registry.db import Database
from baton.registry.models import ROLES, Token, User
from baton.scopes import ROLE_SCOPES, SCOPES

__all__ = ["Actor", "Identity", "TokenInfo", "only_fields", "token_fields"]

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_LABEL_MAX = 100
class AuditHook(Protocol):
    """Appends an audit event in the caller's transaction: the registry's ``_audit``."""

    def __call__(self, s: Session, actor: Actor, action: str, *, reason: str,
                 details: dict[str, Any] | None = None) -> object: ...


@dataclass(frozen=True)
class TokenInfo:
    """The token an actor authenticated with."""

    id: int
    label: str
    expires_at: dt.datetime | None
    service: bool
    scopes: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "expires_at": _iso(self.expires_at),
                "service": self.service}


@dataclass(frozen=True)
class Actor:
    """Who is acting: resolved from a token, or the local operator of the CLI. Two actors
    are equal when name and role are (the token they used does not matter)."""

    name: str
    role: str
    token: TokenInfo | None = field(default=None, compare=False)

    @property
    def scopes(self) -> frozenset[str]:
        """Engine scopes: the token's, else (a local actor) the role's."""
        return self.token.scopes if self.token else ROLE_SCOPES.get(self.role, frozenset())

    def whoami(self) -> dict[str, Any]:
        """The JSON engines read to verify a caller (stable: documented in registry.md)."""
        return {"name": self.name, "role": self.role, "scopes": sorted(self.scopes),
                "token": self.token.to_dict() if self.token else None}


# -- what a client sends ----------------------------------------------------------------

def only_fields(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """``data``, refused if it names a field outside ``known`` (a typo must not pass as a
    default)."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; this request takes "
                           f"{', '.join(known)}", code="UNKNOWN_FIELD",
                           details={"field": unknown[0]})
    return data


def token_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Check the body of a token request: types only; limits are the service's."""
    only_fields(data, ("days", "scopes", "service", "label"))
    out: dict[str, Any] = {}
    if "days" in data:
        out["days"] = data["days"]
    if data.get("scopes") is not None:
        out["scopes"] = data["scopes"]
    service = data.get("service", False)
    if not isinstance(service, bool):
        raise _bad("service", "field 'service' must be true or false")
    out["service"] = service
    label = data.get("label", "")
    if not isinstance(label, str):
        raise _bad("label", "field 'label' must be a string")
    out["label"] = label
    return out


def _bad(name: str, message: str, code: str = "BAD_REQUEST", **details: Any) -> RequestError:
    return RequestError(message, code=code, details={"field": name, **details})


def _check_days(days: Any, *, service: bool, limit: float) -> float | None:
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)
                             or not math.isfinite(days) or days <= 0):
        raise _bad("days", f"field 'days' must be a positive number of days, got {days!r}")
    if not service and (days is None or days > limit):
        asked = "a token that never expires" if days is None else f"{days:g} days"
        raise _bad("days", f"{asked} is longer than this registry allows ({limit:g} days); "
                   "ask an admin for a service token", code="TOKEN_TOO_LONG",
                   limit=_plain(float(limit)))
    if days is not None and days > MAX_DAYS:
        raise _bad("days", f"{days:g} days is beyond any sensible validity (at most "
                   f"{MAX_DAYS}); use null for a service token that never expires",
                   limit=MAX_DAYS)
    return None if days is None else float(days)


def _check_scopes(scopes: Any, role: str) -> list[str]:
    allowed = ROLE_SCOPES.get(role, frozenset())
    if scopes is None:
        return sorted(allowed)
    if not isinstance(scopes, list | tuple | set | frozenset) or not all(
            isinstance(x, str) for x in scopes):
        raise _bad("scopes", "field 'scopes' must be a list of scope names")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise _bad("scopes", f"unknown scope {unknown[0]!r}; scopes are "
                   f"{', '.join(SCOPES)}", code="INVALID_SCOPE", allowed=list(SCOPES))
    beyond = sorted(set(scopes) - allowed)
    if beyond:
        raise _bad("scopes", f"role {role} cannot hold scope {beyond[0]!r}; it may hold "
                   f"{', '.join(sorted(allowed)) or 'none'}", code="SCOPE_NOT_ALLOWED",
                   allowed=sorted(allowed))
    return sorted(set(scopes))


def _check_label(label: str) -> str:
    if len(label) > _LABEL_MAX or not label.isprintable():
        raise _bad("label", f"a label is at most {_LABEL_MAX} printable characters",
                   limit=_LABEL_MAX)
    return label


# -- the service ------------------------------------------------------------------------

class Identity:
    """Users and tokens on the registry's database; ``audit`` appends the audit event in
    the same transaction as the change it records."""

    def __init__(self, db: Database, audit: AuditHook, *,
                 token_max_days: float = 90.0) -> None:
        self.db = db
        self.audit = audit
        self.token_max_days = token_max_days

    def authenticate(self, token: str | None) -> Actor:
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>' "
                               "(see 'baton login')")
        with self.db.session() as s:
            row = s.scalar(select(Token).where(Token.token_hash == hash_token(token)))
            if row is None:
                raise Unauthorized("invalid API token")
            now = _now()
            if row.revoked_at is not None:
                raise Unauthorized(f"API token {row.id} was revoked at "
                                   f"{_iso(row.revoked_at)}", code="TOKEN_REVOKED")
            if row.expires_at is not None and _aware(row.expires_at) < now:
                raise Unauthorized(f"API token expired at {_iso(row.expires_at)}",
                                   code="TOKEN_EXPIRED")
            if row.user.disabled:
                raise Unauthorized(f"user {row.user.name} is disabled", code="USER_DISABLED")
            last = row.last_used_at
            if last is None or (now - _aware(last)).total_seconds() >= LAST_USED_EVERY:
                row.last_used_at = now
            return Actor(row.user.name, row.user.role, _info(row))

    def create_user(self, actor: Actor, name: str, role: str) -> dict[str, Any]:
        require(actor.role, "admin", actor.name)
        if role not in ROLES:
            raise RequestError(f"role must be one of {', '.join(ROLES)}, got {role!r}",
                               code="INVALID_ROLE", details={"field": "role"})
        if not _USER_NAME.match(name):
            raise RequestError("user names are 1-100 letters, digits, '.', '_', '@' or '-', "
                               f"starting with a letter or digit; got {name!r}",
                               code="INVALID_USER_NAME", details={"field": "name"})
        try:
            with self.db.session() as s:
                existing = _user(s, name)
                if existing is not None:
                    raise _exists(name, existing.name)
                s.add(User(name=name, role=role))
                s.flush()
                self.audit(s, actor, "create-user", reason="",
                           details={"user": name, "role": role})
        except IntegrityError:  # a concurrent create of the same name (any case) won
            raise _exists(name, name) from None
        return {"name": name, "role": role}

    def create_token(self, actor: Actor, user: str, *,
                     days: float | None | EllipsisType = ...,
                     scopes: Iterable[str] | None = None, service: bool = False,
                     label: str = "") -> dict[str, Any]:
        """Issue a token for ``user``; ``days=...`` (not given): the registry's maximum.
        The answer holds the token itself: the only time anyone sees it."""
        for_others = service or actor.name.lower() != user.lower()
        require(actor.role, "admin" if for_others else "tokens", actor.name)
        valid = _check_days(self.token_max_days if days is ... else days, service=service,
                            limit=self.token_max_days)
        label = _check_label(label)
        with self.db.session() as s:
            row = _user(s, user)
            if row is None:
                raise NotFound(f"no user named {user}", code="USER_NOT_FOUND")
            granted = _check_scopes(scopes, row.role)
            token = new_token()
            made = Token(user=row, token_hash=hash_token(token), label=label,
                         expires_at=expiry(valid), scopes=granted, service=service,
                         created_by=actor.name, created_at=_now())
            s.add(made)
            s.flush()
            self.audit(s, actor, "create-token", reason="", details={
                "user": row.name, "days": _plain(valid), "token_id": made.id,
                "scopes": granted, "service": service, "label": label})
            return {"token": token, **_describe(made), "days": _plain(valid)}

    def list_tokens(self, actor: Actor, user: str | None = None,
                    all_users: bool = False) -> list[dict[str, Any]]:
        """``actor``'s own tokens; another user's, or everyone's, for an admin."""
        others = all_users or (user is not None and user.lower() != actor.name.lower())
        require(actor.role, "admin" if others else "tokens", actor.name)
        with self.db.session() as s:
            q = select(Token).join(Token.user).order_by(Token.id)
            if not all_users:
                owner = _user(s, user or actor.name)
                if owner is None:
                    raise NotFound(f"no user named {user or actor.name}",
                                   code="USER_NOT_FOUND")
                q = q.where(Token.user_id == owner.id)
            return [_describe(t) for t in s.scalars(q)]

    def revoke_token(self, actor: Actor, token_id: int) -> dict[str, Any]:
        """Revoke a token: one's own, or anyone's for an admin."""
        require(actor.role, "tokens", actor.name)
        with self.db.session() as s:
            row = s.get(Token, token_id)
            if row is None:
                raise NotFound(f"no token with id {token_id}", code="TOKEN_NOT_FOUND",
                               details={"id": token_id})
            if row.user.name.lower() != actor.name.lower():
                require(actor.role, "admin", actor.name)
            if row.revoked_at is not None:
                raise Conflict(f"token {token_id} was already revoked at "
                               f"{_iso(row.revoked_at)}", code="TOKEN_ALREADY_REVOKED",
                               details={"id": token_id})
            row.revoked_at, row.revoked_by = _now(), actor.name
            self.audit(s, actor, "revoke-token", reason="", details={
                "user": row.user.name, "token_id": row.id, "label": row.label,
                "service": row.service})
            return _describe(row)

    def bootstrap_admin(self, name: str, days: float | None | EllipsisType = ...) -> str:
        """The first admin, created from the server's own machine (no token exists yet)."""
        local = Actor("local-admin", "admin")
        with self.db.session() as s:
            row = _user(s, name)
            role = None if row is None else row.role
        if role is None:
            self.create_user(local, name, "admin")
        elif role != "admin":
            raise Conflict(f"user {name} exists with role {role!r}; bootstrap-admin gives "
                           "tokens to admins only", code="NOT_AN_ADMIN",
                           details={"role": role})
        return str(self.create_token(local, name, days=days, label="bootstrap")["token"])


def _user(s: Session, name: str) -> User | None:
    """The user called ``name`` whatever its case (the unique index on lower(name))."""
    return s.scalar(select(User).where(func.lower(User.name) == name.lower()))


def _exists(asked: str, existing: str) -> Conflict:
    same = "" if asked == existing else f" as {existing} (names ignore case)"
    return Conflict(f"user {asked} already exists{same}", code="USER_EXISTS",
                    details={"field": "name", "existing": existing})


def _info(row: Token) -> TokenInfo:
    allowed = ROLE_SCOPES.get(row.user.role, frozenset())
    # A token never holds more than its user's role holds now (roles can be narrowed).
    scopes = allowed if row.scopes is None else frozenset(row.scopes) & allowed
    return TokenInfo(row.id, row.label, row.expires_at and _aware(row.expires_at),
                     row.service, scopes)


def _describe(row: Token) -> dict[str, Any]:
    """A token for listing: everything but its secret and its hash."""
    now = _now()
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and _aware(row.expires_at) < now:
        status = "expired"
    else:
        status = "active"
    return {"id": row.id, "user": row.user.name, "label": row.label,
            "scopes": sorted(_info(row).scopes), "service": row.service, "status": status,
            "created_at": _iso(row.created_at), "created_by": row.created_by,
            "expires_at": _iso(row.expires_at), "last_used_at": _iso(row.last_used_at),
            "revoked_at": _iso(row.revoked_at), "revoked_by": row.revoked_by}


def _plain(days: float | None) -> float | int | None:
    return int(days) if days is not None and days.is_integer() else days


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else _aware(t).isoformat()
