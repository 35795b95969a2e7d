"""What a bundle version is to the registry's users: how a ref names one, which stage
changes a user may ask for, and the description every answer about a version carries."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from baton.registry.models import BundleVersion

#: Promotions a user may ask for; ``draft -> validated`` happens only by a passing check.
#: ``archived -> production`` is a rollback, allowed only to a version that was in
#: production before (``was_production``).
TRANSITIONS = {
    ("validated", "staging"),
    ("staging", "production"),
    ("draft", "archived"), ("validated", "archived"), ("staging", "archived"),
    ("production", "archived"),
}


class VersionRef(NamedTuple):
    """What a ref names: a model, and at most one of a version or a digest."""

    name: str
    version: str | None
    digest: str | None


def parse_ref(ref: str) -> VersionRef:
    """``name``, ``name@version`` or ``name@sha256:...``."""
    name, _, rest = ref.partition("@")
    if not rest:
        return VersionRef(name, None, None)
    if rest.startswith("sha256:"):
        return VersionRef(name, None, rest)
    return VersionRef(name, rest, None)


def name_of(ref: str) -> str:
    return parse_ref(ref).name


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def transition_refusal(bv: BundleVersion, to: str) -> str:
    if (bv.stage, to) == ("archived", "production"):
        return (f"{bv.name}@{bv.version} is archived and was never in production: production "
                "is reached only from staging, or by a rollback to a version that was in "
                "production before")
    order = ["draft", "validated", "staging", "production"]
    if bv.stage in order and to in order and order.index(to) > order.index(bv.stage) + 1:
        skipped = order[order.index(bv.stage) + 1:order.index(to)]
        return (f"{bv.name}@{bv.version} is {bv.stage}: promoting to {to} would skip "
                f"{', '.join(skipped)}")
    return f"{bv.name}@{bv.version} cannot go from {bv.stage} to {to}"


def describe_version(bv: BundleVersion, full: bool = False,
              decision: dict[str, str] | None = None) -> dict[str, Any]:
    """``decision``: the version's latest signed decision (null before migration 0005)."""
    out: dict[str, Any] = {
        "name": bv.name, "version": bv.version, "digest": bv.digest, "stage": bv.stage,
        "author": bv.author, "description": bv.description, "size": bv.size,
        "created_at": _aware(bv.created_at).isoformat(),
        "updated_at": _aware(bv.updated_at).isoformat(),
        "decision": decision,
    }
    if full:
        out["approvals"] = [{"user": a.user, "decision": a.decision, "reason": a.reason,
                             "time": _aware(a.created_at).isoformat()} for a in bv.approvals]
        out["check_report"] = bv.check_report
        out["manifest"] = bv.manifest
    return out
