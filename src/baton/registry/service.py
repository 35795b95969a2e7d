"""The registry's rules: immutable versions, lifecycle, approvals, roles and the audit log.

Every action runs in one transaction that also appends its audit event, so the history can
never disagree with the state. Stage changes of one model lock that model's row (SQLite:
the whole database, by ``BEGIN IMMEDIATE``), so concurrent promotions serialise and each
sees the other's result.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.bundle.archive import extract_archive
from baton.bundle.manifest import BundleManifest
from baton.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RequestError,
    Unauthorized,
    Unavailable,
)
from baton.registry.auth import expiry, hash_token, new_token, require
from baton.registry.blobs import BlobStore
from baton.registry.db import Database
from baton.registry.models import (
    ROLES,
    STAGES,
    Approval,
    AuditEvent,
    BundleVersion,
    Model,
    Token,
    User,
)

#: Promotions a user may ask for; ``draft -> validated`` happens only by a passing check.
TRANSITIONS = {
    ("validated", "staging"),
    ("staging", "production"),
    ("archived", "production"),  # rollback to a version that was approved before
    ("draft", "archived"), ("validated", "archived"), ("staging", "archived"),
    ("production", "archived"),
}

CheckRunner = Callable[[Path], dict[str, Any]]
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


@dataclass(frozen=True)
class Actor:
    """Who is acting: resolved from a token, or the local operator of the CLI."""

    name: str
    role: str


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name``, ``name@version`` or ``name@sha256:...`` -> (name, version, digest)."""
    name, _, rest = ref.partition("@")
    if not rest:
        return name, None, None
    if rest.startswith("sha256:"):
        return name, None, rest
    return name, rest, None


class Registry:
    def __init__(self, db: Database, blobs: BlobStore, *, approvals_required: int = 1,
                 check_runner: CheckRunner | None = None) -> None:
        self.db = db
        self.blobs = blobs
        self.approvals_required = approvals_required
        self.check_runner = check_runner

    # -- identity ----------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Actor:
        if not token:
            raise Unauthorized("missing API token: send 'Authorization: Bearer <token>' "
                               "(see 'baton login')")
        with self.db.session() as s:
            row = s.scalar(select(Token).where(Token.token_hash == hash_token(token)))
            if row is None:
                raise Unauthorized("invalid API token")
            if row.expires_at is not None and _aware(row.expires_at) < _now():
                raise Unauthorized(f"API token expired at {row.expires_at.isoformat()}")
            if row.user.disabled:
                raise Unauthorized(f"user {row.user.name} is disabled")
            return Actor(row.user.name, row.user.role)

    def create_user(self, actor: Actor, name: str, role: str) -> dict[str, Any]:
        require(actor.role, "admin", actor.name)
        if role not in ROLES:
            raise RequestError(f"role must be one of {', '.join(ROLES)}, got {role!r}",
                               code="INVALID_ROLE", details={"field": "role"})
        if not _USER_NAME.match(name):
            raise RequestError("user names are 1-100 letters, digits, '.', '_', '@' or '-', "
                               f"starting with a letter or digit; got {name!r}",
                               code="INVALID_USER_NAME", details={"field": "name"})
        with self.db.session() as s:
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise Conflict(f"user {name} already exists", code="USER_EXISTS")
            s.add(User(name=name, role=role))
            self._audit(s, actor, "create-user", reason="", details={"user": name,
                                                                    "role": role})
        return {"name": name, "role": role}

    def create_token(self, actor: Actor, user: str, *, days: float | None = 90.0,
                     label: str = "") -> str:
        if actor.name != user:
            require(actor.role, "admin", actor.name)
        with self.db.session() as s:
            row = s.scalar(select(User).where(User.name == user))
            if row is None:
                raise NotFound(f"no user named {user}", code="USER_NOT_FOUND")
            token = new_token()
            s.add(Token(user_id=row.id, token_hash=hash_token(token), label=label,
                        expires_at=expiry(days)))
            self._audit(s, actor, "create-token", details={"user": user, "days": days})
        return token

    def bootstrap_admin(self, name: str, days: float | None = 90.0) -> str:
        """The first admin, created from the server's own machine (no token exists yet)."""
        local = Actor("local-admin", "admin")
        with self.db.session() as s:
            role = s.scalar(select(User.role).where(User.name == name))
        if role is None:
            self.create_user(local, name, "admin")
        elif role != "admin":
            raise Conflict(f"user {name} exists with role {role!r}; bootstrap-admin gives "
                           "tokens to admins only", code="NOT_AN_ADMIN",
                           details={"role": role})
        return self.create_token(local, name, days=days, label="bootstrap")

    # -- content -----------------------------------------------------------------------
    def push(self, actor: Actor, archive: Path) -> tuple[dict[str, Any], bool]:
        """Store an archive; return its description and whether it was new."""
        require(actor.role, "push", actor.name)
        digest, size = self.blobs.put(archive)
        manifest = self._manifest_of(archive, digest)
        try:
            with self.db.session() as s:
                existing = s.scalar(select(BundleVersion).where(
                    BundleVersion.name == manifest.name,
                    BundleVersion.version == manifest.version))
                if existing is not None:
                    if existing.digest != digest:
                        raise Conflict(
                            f"{manifest.name}@{manifest.version} already exists with digest "
                            f"{existing.digest}; versions are immutable: bump the version",
                            code="IMMUTABLE_VERSION",
                            details={"existing": existing.digest, "pushed": digest})
                    return _describe(existing), False
                if s.get(Model, manifest.name) is None:
                    s.add(Model(name=manifest.name))
                    s.flush()
                bv = BundleVersion(name=manifest.name, version=manifest.version, digest=digest,
                                   stage="draft", author=actor.name, size=size,
                                   description=manifest.description,
                                   manifest=manifest.to_dict())
                s.add(bv)
                s.flush()
                self._audit(s, actor, "push", bv, to_stage="draft")
                return _describe(bv), True
        except IntegrityError:  # a concurrent push of the same version won the race
            return self.push(actor, archive)

    def _manifest_of(self, archive: Path, digest: str) -> BundleManifest:
        with tempfile.TemporaryDirectory(prefix="baton-push-") as tmp:
            target = Path(tmp) / "bundle"
            extract_archive(archive, target, digest)
            return BundleManifest.load(target)

    def archive_path(self, actor: Actor, ref: str) -> tuple[dict[str, Any], Path]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            bv = self._find(s, ref)
            return _describe(bv), self.blobs.open_verified(bv.digest)

    # -- queries -----------------------------------------------------------------------
    def list(self, actor: Actor, name: str | None = None,
             stage: str | None = None) -> list[dict[str, Any]]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            q = select(BundleVersion).order_by(BundleVersion.name, BundleVersion.id)
            if name:
                q = q.where(BundleVersion.name == name)
            if stage:
                q = q.where(BundleVersion.stage == stage)
            return [_describe(bv) for bv in s.scalars(q)]

    def show(self, actor: Actor, ref: str) -> dict[str, Any]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            bv = self._find(s, ref)
            return _describe(bv, full=True)

    def history(self, actor: Actor, name: str | None = None,
                since_id: int = 0) -> list[dict[str, Any]]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            q = select(AuditEvent).where(AuditEvent.id > since_id).order_by(AuditEvent.id)
            if name:
                q = q.where(AuditEvent.name == name)
            return [e.to_dict() for e in s.scalars(q)]

    # -- lifecycle ---------------------------------------------------------------------
    def validate(self, actor: Actor, ref: str) -> dict[str, Any]:
        """Run ``baton check`` on the stored digest; a pass moves draft to validated."""
        require(actor.role, "validate", actor.name)
        if self.check_runner is None:
            raise Unavailable("this registry has no check runner configured",
                              code="CHECK_UNAVAILABLE")
        with self.db.session() as s:
            bv = self._find(s, ref)
            if bv.stage != "draft":
                raise Conflict(f"{bv.name}@{bv.version} is {bv.stage}; only a draft is "
                               "validated", code="INVALID_TRANSITION",
                               details={"from": bv.stage, "to": "validated"})
            bid, digest = bv.id, bv.digest
        archive = self.blobs.open_verified(digest)
        with tempfile.TemporaryDirectory(prefix="baton-check-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            extract_archive(archive, bundle_dir, digest)
            report = self.check_runner(bundle_dir)
            shutil.rmtree(bundle_dir, ignore_errors=True)
        passed = bool(report.get("passed"))
        with self.db.session() as s:
            self._lock(s, _name_of(ref))
            bv = s.get(BundleVersion, bid)
            assert bv is not None
            bv.check_report = report
            before = bv.stage
            if passed and before == "draft":
                bv.stage, bv.updated_at = "validated", _now()
            self._audit(s, actor, "validate", bv, from_stage=before,
                        to_stage=bv.stage, reason="check passed" if passed else
                        f"check failed at {report.get('failed_stage')}",
                        details={"passed": passed, "failed_stage": report.get("failed_stage")})
            return _describe(bv, full=True)

    def promote(self, actor: Actor, ref: str, to: str, reason: str = "") -> dict[str, Any]:
        if to not in STAGES:
            raise RequestError(f"stage must be one of {', '.join(STAGES)}, got {to!r}",
                               code="INVALID_STAGE", details={"field": "to"})
        if to == "validated":
            return self.validate(actor, ref)
        require(actor.role, "promote", actor.name)
        with self.db.session() as s:
            self._lock(s, _name_of(ref))
            bv = self._find(s, ref)
            before = bv.stage
            if (before, to) not in TRANSITIONS:
                raise Conflict(_transition_refusal(bv, to), code="INVALID_TRANSITION",
                               details={"from": before, "to": to})
            if to == "production":
                self._require_approvals(bv)
                for current in s.scalars(select(BundleVersion).where(
                        BundleVersion.name == bv.name, BundleVersion.stage == "production")):
                    current.stage, current.updated_at = "archived", _now()
                    self._audit(s, actor, "archive", current, from_stage="production",
                                to_stage="archived",
                                reason=f"replaced by {bv.version} in production")
            bv.stage, bv.updated_at = to, _now()
            action = "rollback" if before == "archived" else "promote"
            self._audit(s, actor, action, bv, from_stage=before, to_stage=to, reason=reason)
            return _describe(bv, full=True)

    def decide(self, actor: Actor, ref: str, decision: str, reason: str) -> dict[str, Any]:
        """Record an approval or a rejection by an approver who is not the author."""
        require(actor.role, "approve", actor.name)
        if not reason.strip():
            raise RequestError(f"a reason is required to {decision}", code="REASON_REQUIRED",
                               details={"field": "reason"})
        with self.db.session() as s:
            self._lock(s, _name_of(ref))
            bv = self._find(s, ref)
            if bv.author == actor.name:
                raise Forbidden(f"{actor.name} is the author of {bv.name}@{bv.version} and "
                                "cannot approve or reject it (separation of duties)",
                                code="SEPARATION_OF_DUTIES")
            if bv.stage not in ("validated", "staging"):
                raise Conflict(f"{bv.name}@{bv.version} is {bv.stage}; approvals are given to "
                               "validated or staging bundles", code="INVALID_TRANSITION")
            if any(a.user == actor.name for a in bv.approvals):
                raise Conflict(f"{actor.name} already decided on {bv.name}@{bv.version}",
                               code="ALREADY_DECIDED")
            s.add(Approval(bundle_id=bv.id, user=actor.name, decision=decision, reason=reason))
            self._audit(s, actor, decision, bv, from_stage=bv.stage, to_stage=bv.stage,
                        reason=reason)
            s.flush()
            s.refresh(bv)
            return _describe(bv, full=True)

    def audit_log(self, actor: Actor) -> list[dict[str, Any]]:
        return self.history(actor)

    # -- internals ---------------------------------------------------------------------
    def _require_approvals(self, bv: BundleVersion) -> None:
        rejected = [a for a in bv.approvals if a.decision == "reject"]
        if rejected:
            r = rejected[0]
            raise Conflict(f"{bv.name}@{bv.version} was rejected by {r.user}: {r.reason}",
                           code="REJECTED", details={"by": r.user, "reason": r.reason})
        approvers = {a.user for a in bv.approvals if a.decision == "approve"}
        if len(approvers) < self.approvals_required:
            raise Conflict(f"{bv.name}@{bv.version} has {len(approvers)} of the "
                           f"{self.approvals_required} approvals production needs",
                           code="NOT_ENOUGH_APPROVALS",
                           details={"approvals": sorted(approvers),
                                    "required": self.approvals_required})

    def _lock(self, s: Session, name: str) -> None:
        if self.db.dialect == "postgresql":
            s.execute(select(Model).where(Model.name == name).with_for_update())

    def _find(self, s: Session, ref: str) -> BundleVersion:
        name, version, digest = parse_ref(ref)
        q = select(BundleVersion).where(BundleVersion.name == name)
        if version is not None:
            q = q.where(BundleVersion.version == version)
        elif digest is not None:
            q = q.where(BundleVersion.digest == digest)
        else:
            q = q.order_by(BundleVersion.id.desc()).limit(1)
        bv = s.scalar(q)
        if bv is None:
            raise NotFound(f"no bundle {ref} in the registry", code="BUNDLE_NOT_FOUND",
                           details={"ref": ref})
        return bv

    def _audit(self, s: Session, actor: Actor, action: str, bv: BundleVersion | None = None,
               *, from_stage: str | None = None, to_stage: str | None = None,
               reason: str = "", details: dict[str, Any] | None = None) -> None:
        s.add(AuditEvent(actor=actor.name, action=action, time=_now(),
                         name=bv.name if bv else None, version=bv.version if bv else None,
                         digest=bv.digest if bv else None, from_stage=from_stage,
                         to_stage=to_stage, reason=reason, details=details))

    def count_events(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count(AuditEvent.id))) or 0)


def _name_of(ref: str) -> str:
    return parse_ref(ref)[0]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def _transition_refusal(bv: BundleVersion, to: str) -> str:
    order = ["draft", "validated", "staging", "production"]
    if bv.stage in order and to in order and order.index(to) > order.index(bv.stage) + 1:
        skipped = order[order.index(bv.stage) + 1:order.index(to)]
        return (f"{bv.name}@{bv.version} is {bv.stage}: promoting to {to} would skip "
                f"{', '.join(skipped)}")
    return f"{bv.name}@{bv.version} cannot go from {bv.stage} to {to}"


def _describe(bv: BundleVersion, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": bv.name, "version": bv.version, "digest": bv.digest, "stage": bv.stage,
        "author": bv.author, "description": bv.description, "size": bv.size,
        "created_at": _aware(bv.created_at).isoformat(),
        "updated_at": _aware(bv.updated_at).isoformat(),
    }
    if full:
        out["approvals"] = [{"user": a.user, "decision": a.decision, "reason": a.reason,
                             "time": _aware(a.created_at).isoformat()} for a in bv.approvals]
        out["check_report"] = bv.check_report
        out["manifest"] = bv.manifest
    return out
