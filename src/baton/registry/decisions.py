"""Signed decisions on the registry side: after every action on a version, its complete
state is signed and appended to the ``decisions`` table, in the same transaction as the
action's audit event (see :mod:`baton.trust` for what engines do with them).

Versions changed before migration 0005 have no decision and are never signed after the
fact: a database editor could otherwise insert a row and wait for the registry to sign it.
They stay unsigned until an operator acts on them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from baton.registry.audit import utc_text
from baton.registry.models import AuditEvent, BundleVersion, SignedDecision
from baton.trust import Decision, SigningKey, sign_decision


def state_of(bv: BundleVersion, event: AuditEvent, approvals_required: int) -> Decision:
    """The version's whole state after ``event``."""
    return Decision(
        name=bv.name, version=bv.version, digest=bv.digest, stage=bv.stage,
        approvals=tuple(sorted(a.user for a in bv.approvals if a.decision == "approve")),
        rejections=tuple(sorted(a.user for a in bv.approvals if a.decision == "reject")),
        approvals_required=approvals_required, seq=event.id, action=event.action,
        time=utc_text(event.time))


def record(s: Session, key: SigningKey, bv: BundleVersion, event: AuditEvent,
           approvals_required: int) -> dict[str, str]:
    """Sign ``bv``'s state after ``event`` and append it; return the signed decision."""
    s.flush()
    s.refresh(bv, ["approvals"])
    signed = sign_decision(key, state_of(bv, event, approvals_required))
    s.add(SignedDecision(bundle_id=bv.id, seq=event.id, payload=signed["payload"],
                         signature=signed["signature"], key_id=signed["key"]))
    return signed


def latest(s: Session, bundle_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """The newest signed decision of each of these versions (absent: none yet)."""
    ids = list(bundle_ids)
    if not ids:
        return {}
    newest = (select(func.max(SignedDecision.id)).where(SignedDecision.bundle_id.in_(ids))
              .group_by(SignedDecision.bundle_id))
    rows = s.scalars(select(SignedDecision).where(SignedDecision.id.in_(newest)))
    return {row.bundle_id: row.signed() for row in rows}


def history(s: Session, bundle_id: int) -> list[dict[str, Any]]:
    rows = s.scalars(select(SignedDecision).where(SignedDecision.bundle_id == bundle_id)
                     .order_by(SignedDecision.id))
    return [row.signed() for row in rows]
