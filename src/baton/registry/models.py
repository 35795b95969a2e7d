"""The registry's metadata schema (SQLAlchemy 2). Content lives in the blob store, by digest.

Schema changes go through Alembic migrations (``registry/migrations``); the same schema
runs on SQLite (the zero-configuration default) and PostgreSQL (production). Engines may
keep their prediction log in the same database (``BATON_PREDICTION_LOG_STORE=registry``):
its tables are the monitoring package's (``baton.monitor.predlog.tables``), under its own
migrations and version table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

STAGES = ("draft", "validated", "staging", "production", "archived")
ROLES = ("client", "viewer", "data-scientist", "operator", "approver", "admin")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class User(Base):
    """A person or an application. Names are unique whatever their case (an index on
    ``lower(name)``, migration 0004)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled: Mapped[bool] = mapped_column(default=False)


Index("uq_users_name_lower", func.lower(User.name), unique=True)


class Token(Base):
    """An API token; only its sha256 is stored. ``scopes`` NULL (tokens older than
    migration 0004) means its user's role's scopes."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    scopes: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    service: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str | None] = mapped_column(String(100), default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(100), default=None)

    user: Mapped[User] = relationship(lazy="joined")


class Model(Base):
    """One row per model name: the row that stage changes lock, so they serialise."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BundleVersion(Base):
    __tablename__ = "bundle_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundle_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    stage: Mapped[str] = mapped_column(String(16), default="draft")
    author: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column()
    check_report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: The audit event of the latest action on this version: a database trigger refuses a
    #: stage change whose audit_id is not a newer event about it with that stage (0005).
    audit_id: Mapped[int | None] = mapped_column(default=None)
    #: Set when the version enters production, never cleared: what makes a rollback real.
    was_production: Mapped[bool] = mapped_column(default=False)

    approvals: Mapped[list[Approval]] = relationship(
        back_populates="bundle", order_by="Approval.id", lazy="selectin")


class Approval(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundle_versions.id"), index=True)
    user: Mapped[str] = mapped_column(String(100))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Its audit event (approve/reject by this user on this version), checked by a trigger.
    audit_id: Mapped[int | None] = mapped_column(default=None, unique=True)

    bundle: Mapped[BundleVersion] = relationship(back_populates="approvals")


class SignedDecision(Base):
    """Append-only: a version's complete state after each action, signed by the registry
    (see :mod:`baton.trust`). ``seq`` is the audit event of that action."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundle_versions.id"), index=True)
    seq: Mapped[int] = mapped_column(unique=True)
    payload: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(100))
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def signed(self) -> dict[str, str]:
        return {"payload": self.payload, "signature": self.signature, "key": self.key_id}


class AuditEvent(Base):
    """Append-only (database triggers refuse updates and deletes) and hash-chained."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    digest: Mapped[str | None] = mapped_column(String(71), default=None)
    from_stage: Mapped[str | None] = mapped_column(String(16), default=None)
    to_stage: Mapped[str | None] = mapped_column(String(16), default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    #: The hash chain (see :mod:`baton.registry.audit`): the previous entry's hash, this
    #: entry's, and the registry key's signature over it.
    prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    hash: Mapped[str | None] = mapped_column(String(64), default=None)
    signature: Mapped[str | None] = mapped_column(String(100), default=None)

    def to_dict(self) -> dict[str, Any]:
        t = self.time if self.time.tzinfo else self.time.replace(tzinfo=dt.UTC)  # SQLite
        # In UTC whatever the session's zone: the hash chain covers this spelling.
        return {"id": self.id, "time": t.astimezone(dt.UTC).isoformat(), "actor": self.actor,
                "action": self.action, "name": self.name, "version": self.version,
                "digest": self.digest, "from": self.from_stage, "to": self.to_stage,
                "reason": self.reason, "details": self.details or {},
                "prev_hash": self.prev_hash, "hash": self.hash, "signature": self.signature}
