"""Users, roles and API tokens. Tokens are random, shown once, and stored as sha256."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from baton.errors import Forbidden, Unauthorized

__all__ = ["LAST_USED_EVERY", "MAX_DAYS", "PERMISSIONS", "TOKEN_PREFIX", "Forbidden",
           "Unauthorized", "expiry", "hash_token", "new_token", "require"]

_PEOPLE = frozenset({"viewer", "data-scientist", "operator", "approver", "admin"})

#: What each role may do. Reading (list, show, pull, history) and managing one's own
#: tokens are open to every role but ``client`` (an application that only calls models
#: on engines: it may only ask the registry who it is).
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": _PEOPLE,
    "tokens": _PEOPLE,
    "push": frozenset({"data-scientist", "admin"}),
    "validate": frozenset({"data-scientist", "operator", "admin"}),
    "promote": frozenset({"operator", "admin"}),
    "approve": frozenset({"approver", "admin"}),
    "admin": frozenset({"admin"}),
}
TOKEN_PREFIX = "bt_"
#: No token, service tokens included, outlives this many days (100 years): beyond it dates
#: overflow, and nobody means it.
MAX_DAYS = 36500
#: Seconds between two writes of a token's ``last_used_at``: authentication stays a read.
LAST_USED_EVERY = 60.0


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def require(role: str, permission: str, user: str) -> None:
    allowed = PERMISSIONS[permission]
    if role not in allowed:
        raise Forbidden(f"{user} has role {role!r}; {permission} needs one of "
                        f"{', '.join(sorted(allowed))}",
                        details={"role": role, "permission": permission})


def expiry(days: float | None) -> dt.datetime | None:
    if days is None:
        return None
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
