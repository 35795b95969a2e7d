"""What a token lets its holder do on an engine, and what each registry role may hold.

An engine checks one scope per route (see docs/security.md):

- ``infer``: predictions (``/v2/models/*/infer``, ``/v1/models/*/predict``) and the model
  metadata and OpenAPI document a client needs to call them;
- ``feedback``: ground truth (``/v1/models/*/feedback``), which moves the accuracy figures;
- ``read``: what operators watch (``/metrics``, ``/v1/stats``, ``/v1/models``, the dashboard);
- ``admin``: everything.

``/v2/health/*`` needs no token, so that probes work.

Registry-issued tokens carry the scopes of their user's role (:data:`ROLE_SCOPES`), or a
subset of them named when the token was created.
"""

from __future__ import annotations

from collections.abc import Iterable

SCOPES: tuple[str, ...] = ("infer", "feedback", "read", "admin")

#: Engine scopes a registry role may hold. ``client`` is for applications that only call
#: models; it has no registry permission at all.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "client": frozenset({"infer", "feedback"}),
    "viewer": frozenset({"read"}),
    "data-scientist": frozenset({"infer", "feedback", "read"}),
    "operator": frozenset({"infer", "read"}),
    "approver": frozenset({"read"}),
    "admin": frozenset(SCOPES),
}


def allows(held: Iterable[str], needed: str) -> bool:
    """Whether scopes ``held`` grant ``needed`` (``admin`` grants every scope)."""
    held = set(held)
    return needed in held or "admin" in held


def invalid_scopes(scopes: Iterable[str]) -> list[str]:
    return sorted(set(scopes) - set(SCOPES))
