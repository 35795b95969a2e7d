"""The registry's rules: immutable versions, lifecycle, approvals, roles and the audit log.

Every action runs in one transaction that also appends its audit event, so the history can
never disagree with the state. Stage changes of one model lock that model's row (SQLite:
the whole database, by ``BEGIN IMMEDIATE``), so concurrent promotions serialise and each
sees the other's result.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.bundle.archive import extract_archive
from baton.bundle.manifest import BundleManifest
from baton.errors import Conflict, Forbidden, NotFound, RequestError, Unavailable
from baton.registry import audit, decisions
from baton.registry.auth import require
from baton.registry.blobs import BlobStore
from baton.registry.db import Database
from baton.registry.identity import Actor, Identity
from baton.registry.models import STAGES, Approval, AuditEvent, BundleVersion, Model
from baton.registry.reports import ReportStore
from baton.registry.versions import (
    TRANSITIONS,
    describe_version,
    name_of,
    parse_ref,
    transition_refusal,
)
from baton.trust import SigningKey

CheckRunner = Callable[[Path], dict[str, Any]]


#: PostgreSQL advisory lock class for pushes and garbage collection (see _lock_content).
_PG_CONTENT = 2


class Registry:
    """``signing_key`` signs every decision and audit entry; ``head_file`` is where the
    signed audit head checkpoint lives (none: no checkpoint)."""

    def __init__(self, db: Database, blobs: BlobStore, signing_key: SigningKey, *,
                 approvals_required: int = 1, check_runner: CheckRunner | None = None,
                 token_max_days: float = 90.0, head_file: Path | None = None) -> None:
        self.db = db
        self.blobs = blobs
        self.reports = ReportStore(blobs.root / "reports")  # beside the archives
        self.signing_key = signing_key
        self.head_file = head_file
        self.approvals_required = approvals_required
        self.check_runner = check_runner
        self.identity = Identity(db, self._audit, token_max_days=token_max_days)

    # -- identity (baton.registry.identity) ------------------------------------------------
    def authenticate(self, token: str | None) -> Actor:
        return self.identity.authenticate(token)

    def create_user(self, actor: Actor, name: str, role: str) -> dict[str, Any]:
        return self.identity.create_user(actor, name, role)

    def create_token(self, actor: Actor, user: str, **options: Any) -> dict[str, Any]:
        """See :meth:`Identity.create_token`: days, scopes, service, label."""
        return self.identity.create_token(actor, user, **options)

    def list_tokens(self, actor: Actor, user: str | None = None,
                    all_users: bool = False) -> list[dict[str, Any]]:
        return self.identity.list_tokens(actor, user, all_users)

    def revoke_token(self, actor: Actor, token_id: int) -> dict[str, Any]:
        return self.identity.revoke_token(actor, token_id)

    def bootstrap_admin(self, name: str, days: float | None | EllipsisType = ...) -> str:
        return self.identity.bootstrap_admin(name, days)

    # -- content -----------------------------------------------------------------------
    def push(self, actor: Actor, archive: Path) -> tuple[dict[str, Any], bool]:
        """Store an archive; return its description and whether it was new.

        The archive and its manifest are verified before anything is stored; a push the
        database then refuses deletes its blob unless another version references it."""
        require(actor.role, "push", actor.name)
        digest, manifest = self._manifest_of(archive)
        try:
            # Stored outside the database's lock: verifying and copying a large archive
            # takes time. _record_push stores it again if it went meanwhile.
            self.blobs.put(archive)
            try:
                return self._record_push(actor, archive, digest, manifest)
            except IntegrityError:
                # A concurrent push of the same version won the race: once more sees it. (A
                # constraint that keeps refusing fails again, rather than looping.)
                return self._record_push(actor, archive, digest, manifest)
        except BaseException:
            self._discard_unreferenced(digest)
            raise

    def _record_push(self, actor: Actor, archive: Path, digest: str,
                     manifest: BundleManifest) -> tuple[dict[str, Any], bool]:
        with self.db.session() as s:
            self._lock_content(s, digest)
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
                return self._describe(s, existing), False
            if s.get(Model, manifest.name) is None:
                s.add(Model(name=manifest.name))
                s.flush()
            if not self.blobs.path(digest).is_file():  # removed by gc or a refused push
                self.blobs.put(archive)
            size = self.blobs.path(digest).stat().st_size
            bv = BundleVersion(name=manifest.name, version=manifest.version, digest=digest,
                               stage="draft", author=actor.name, size=size,
                               description=manifest.description,
                               manifest=manifest.to_dict())
            # The database accepts a version only with its push event (migration 0005).
            event = self._audit(s, actor, "push", bv, to_stage="draft")
            bv.audit_id = event.id
            s.add(bv)
            self._sign(s, bv, event)
            return self._describe(s, bv), True

    def _manifest_of(self, archive: Path) -> tuple[str, BundleManifest]:
        with tempfile.TemporaryDirectory(prefix="baton-push-") as tmp:
            target = Path(tmp) / "bundle"
            digest = extract_archive(archive, target, limits=self.blobs.limits)
            return digest, BundleManifest.load(target)

    def _lock_content(self, s: Session, digest: str, *, everything: bool = False) -> None:
        """Pushes of one digest, the removal of a refused push's blob and garbage
        collection serialise (SQLite: BEGIN IMMEDIATE already does)."""
        if self.db.dialect != "postgresql":
            return
        if everything:
            s.execute(text("SELECT pg_advisory_xact_lock(:c, 0)"), {"c": _PG_CONTENT})
            return
        s.execute(text("SELECT pg_advisory_xact_lock_shared(:c, 0)"), {"c": _PG_CONTENT})
        s.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:d))"),
                  {"c": _PG_CONTENT + 1, "d": digest})

    def _discard_unreferenced(self, digest: str) -> None:
        with self.db.session() as s:
            self._lock_content(s, digest)
            if s.scalar(select(BundleVersion.id).where(BundleVersion.digest == digest)
                        .limit(1)) is None:
                self.blobs.delete(digest)

    def collect_garbage(self, dry_run: bool = False) -> list[Path]:
        """Remove blobs no version references and stale uploads (the registry host's
        operator: ``baton registry gc``); return what was (would be) removed."""
        with self.db.session() as s:
            self._lock_content(s, "", everything=True)
            referenced = set(s.scalars(select(BundleVersion.digest).distinct()))
            return self.blobs.collect_garbage(referenced, dry_run=dry_run)

    def archive_path(self, actor: Actor, ref: str) -> tuple[dict[str, Any], Path]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            bv = self._find(s, ref)
            return self._describe(s, bv), self.blobs.open_verified(bv.digest)

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
            rows = list(s.scalars(q))
            signed = decisions.latest(s, [bv.id for bv in rows])
            return [describe_version(bv, decision=signed.get(bv.id)) for bv in rows]

    def show(self, actor: Actor, ref: str) -> dict[str, Any]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            bv = self._find(s, ref)
            return self._describe(s, bv, full=True)

    def history(self, actor: Actor, name: str | None = None, since_id: int = 0,
                limit: int | None = None) -> builtins.list[dict[str, Any]]:
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            q = select(AuditEvent).where(AuditEvent.id > since_id).order_by(AuditEvent.id)
            if name:
                q = q.where(AuditEvent.name == name)
            if limit is not None:
                q = q.limit(limit)
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
            extract_archive(archive, bundle_dir, digest, limits=self.blobs.limits)
            report = self.check_runner(bundle_dir)
            self.reports.keep(digest, report)  # its handoff report, if the runner wrote one
            shutil.rmtree(bundle_dir, ignore_errors=True)
        passed = bool(report.get("passed"))
        with self.db.session() as s:
            self._lock(s, name_of(ref))
            checked = s.get(BundleVersion, bid)
            if checked is None:  # versions are never deleted; a database edited by hand could
                raise NotFound(f"{ref} disappeared from the registry while it was checked",
                               code="BUNDLE_NOT_FOUND")
            before = checked.stage
            after = "validated" if passed and before == "draft" else before
            self._change(s, actor, "validate", checked, after,
                         reason="check passed" if passed else
                         f"check failed at {report.get('failed_stage')}",
                         details={"passed": passed, "failed_stage": report.get("failed_stage")})
            checked.check_report = report
            return self._describe(s, checked, full=True)

    def promote(self, actor: Actor, ref: str, to: str, reason: str = "") -> dict[str, Any]:
        if to not in STAGES:
            raise RequestError(f"stage must be one of {', '.join(STAGES)}, got {to!r}",
                               code="INVALID_STAGE", details={"field": "to"})
        if to == "validated":
            return self.validate(actor, ref)
        require(actor.role, "promote", actor.name)
        with self.db.session() as s:
            self._lock(s, name_of(ref))
            bv = self._find(s, ref)
            before = bv.stage
            rollback = (before, to) == ("archived", "production") and bv.was_production
            if (before, to) not in TRANSITIONS and not rollback:
                raise Conflict(transition_refusal(bv, to), code="INVALID_TRANSITION",
                               details={"from": before, "to": to})
            if to == "production":
                self._require_approvals(bv)
                for current in list(s.scalars(select(BundleVersion).where(
                        BundleVersion.name == bv.name, BundleVersion.stage == "production"))):
                    self._change(s, actor, "archive", current, "archived",
                                 reason=f"replaced by {bv.version} in production")
            self._change(s, actor, "rollback" if rollback else "promote", bv, to, reason=reason)
            return self._describe(s, bv, full=True)

    def decide(self, actor: Actor, ref: str, decision: str, reason: str) -> dict[str, Any]:
        """Record an approval or a rejection by an approver who is not the author."""
        require(actor.role, "approve", actor.name)
        if not reason.strip():
            raise RequestError(f"a reason is required to {decision}", code="REASON_REQUIRED",
                               details={"field": "reason"})
        with self.db.session() as s:
            self._lock(s, name_of(ref))
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
            # The database accepts an approval only with its audit event (migration 0005).
            event = self._audit(s, actor, decision, bv, from_stage=bv.stage,
                                to_stage=bv.stage, reason=reason)
            s.add(Approval(bundle_id=bv.id, user=actor.name, decision=decision, reason=reason,
                           audit_id=event.id))
            bv.audit_id = event.id
            self._sign(s, bv, event)
            return self._describe(s, bv, full=True)

    def audit_log(self, actor: Actor, *, after: int = 0, limit: int | None = None,
                  last: int | None = None) -> builtins.list[dict[str, Any]]:
        """Audit events with an id above ``after``, oldest first, at most ``limit``; or
        the newest ``last`` events, oldest first."""
        if last is None:
            return self.history(actor, since_id=after, limit=limit)
        require(actor.role, "read", actor.name)
        with self.db.session() as s:
            q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(last)
            return [e.to_dict() for e in reversed(list(s.scalars(q)))]

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

    def _change(self, s: Session, actor: Actor, action: str, bv: BundleVersion, to: str,
                reason: str = "", details: dict[str, Any] | None = None) -> None:
        """Move ``bv`` to stage ``to`` with its audit event and signed decision. The event
        comes first: the database refuses a stage change without it (migration 0005)."""
        event = self._audit(s, actor, action, bv, from_stage=bv.stage, to_stage=to,
                            reason=reason, details=details)
        if to != bv.stage:
            bv.stage, bv.updated_at = to, _now()
        bv.was_production = bv.was_production or to == "production"
        bv.audit_id = event.id
        self._sign(s, bv, event)

    def _sign(self, s: Session, bv: BundleVersion, event: AuditEvent) -> None:
        decisions.record(s, self.signing_key, bv, event, self.approvals_required)

    def _describe(self, s: Session, bv: BundleVersion, full: bool = False) -> dict[str, Any]:
        return describe_version(bv, full, decisions.latest(s, [bv.id]).get(bv.id))

    def _audit(self, s: Session, actor: Actor, action: str, bv: BundleVersion | None = None,
               *, from_stage: str | None = None, to_stage: str | None = None,
               reason: str = "", details: dict[str, Any] | None = None) -> AuditEvent:
        """Append a chained, signed audit entry; the head checkpoint follows the commit."""
        entry = audit.append(s, self.signing_key, self.head_file, actor=actor.name,
                             action=action, name=bv.name if bv else None,
                             version=bv.version if bv else None,
                             digest=bv.digest if bv else None, from_stage=from_stage,
                             to_stage=to_stage, reason=reason, details=details)
        if self.head_file is not None and "audit_head" not in s.info:
            sa_event.listen(s, "after_commit", self._write_checkpoint)
        s.info["audit_head"] = (entry.id, entry.hash)
        return entry

    def _write_checkpoint(self, s: Session) -> None:
        head = s.info.pop("audit_head", None)
        if head is not None and self.head_file is not None:
            audit.write_checkpoint(self.head_file, self.signing_key, *head)

    def audit_head(self) -> dict[str, Any] | None:
        """The signed head checkpoint, as stored (None: this registry keeps none yet)."""
        if self.head_file is None or not self.head_file.exists():
            return None
        head: dict[str, Any] = json.loads(self.head_file.read_text())
        return head

    def count_events(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count(AuditEvent.id))) or 0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
