"""Trust chain: signed decisions, a hash-chained audit log, and state that changes only with
its audit event, enforced by the database itself.

- ``audit_events`` gain ``prev_hash``, ``hash`` and ``signature``. Existing entries are
  chained here (hashed, not signed: the migration has no key); the registry signs every
  entry it appends from now on (see baton.registry.audit).
- ``decisions``: append-only, one signed state of a version per action.
- ``bundle_versions.audit_id``: the audit event of the latest action on the version. A
  version is inserted only with its push event; its stage changes only with a newer event
  about it that has that stage; name, version and digest never change.
- ``bundle_versions.was_production``: set when a version enters production, never cleared
  (what lets a rollback through); set here for versions whose history shows production.
- ``approvals.audit_id``: an approval or rejection is inserted only with its audit event
  (same user, same version, same decision); approvals are never updated or deleted.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BV_REFUSAL = "bundle_versions: a version is inserted and changes stage only with its audit event"
AP_REFUSAL = "approvals: an approval is inserted only with its audit event"


def upgrade() -> None:
    for column in ("prev_hash", "hash"):
        op.add_column("audit_events", sa.Column(column, sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("signature", sa.String(100), nullable=True))
    op.add_column("bundle_versions", sa.Column("audit_id", sa.Integer, nullable=True))
    op.add_column("bundle_versions", sa.Column("was_production", sa.Boolean, nullable=False,
                                               server_default=sa.false()))
    op.add_column("approvals", sa.Column("audit_id", sa.Integer, nullable=True))
    op.create_index("uq_approvals_audit_id", "approvals", ["audit_id"], unique=True)
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("bundle_id", sa.Integer, sa.ForeignKey("bundle_versions.id"), nullable=False,
                  index=True),
        sa.Column("seq", sa.Integer, nullable=False, unique=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("signature", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    _chain_existing_events()
    op.execute("""UPDATE bundle_versions SET was_production = TRUE WHERE stage = 'production'
                  OR EXISTS (SELECT 1 FROM audit_events e WHERE e.name = bundle_versions.name
                             AND e.version = bundle_versions.version
                             AND e.to_stage = 'production')""")
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _chain_existing_events() -> None:
    """Hash the entries written before this revision into one chain (unsigned)."""
    from baton.registry.audit import GENESIS, chain_hash, utc_text

    events = sa.table("audit_events", *(sa.column(c) for c in (
        "id", "actor", "action", "name", "version", "digest", "from_stage", "to_stage",
        "reason", "prev_hash", "hash")), sa.column("time", TS), sa.column("details", sa.JSON))
    bind = op.get_bind()
    rows = bind.execute(sa.select(events).order_by(events.c.id)).all()
    if not rows:
        return
    postgresql = bind.dialect.name == "postgresql"
    _audit_triggers(enable=False, postgresql=postgresql)
    prev = GENESIS
    for r in rows:
        body = {"id": r.id, "time": utc_text(r.time), "actor": r.actor, "action": r.action,
                "name": r.name, "version": r.version, "digest": r.digest,
                "from": r.from_stage, "to": r.to_stage, "reason": r.reason,
                "details": r.details or {}}
        digest = chain_hash(prev, body)
        bind.execute(events.update().where(events.c.id == r.id)
                     .values(prev_hash=prev, hash=digest))
        prev = digest
    _audit_triggers(enable=True, postgresql=postgresql)


def _audit_triggers(*, enable: bool, postgresql: bool) -> None:
    if postgresql:
        op.execute(f"ALTER TABLE audit_events {'ENABLE' if enable else 'DISABLE'} TRIGGER "
                   "audit_events_no_change")
        return
    for event in ("UPDATE", "DELETE"):
        if enable:
            op.execute(f"""CREATE TRIGGER audit_events_no_{event.lower()} BEFORE {event} ON
                audit_events BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")
        else:
            op.execute(f"DROP TRIGGER audit_events_no_{event.lower()}")


_BV_AUDITED = """EXISTS (SELECT 1 FROM audit_events e WHERE e.id = NEW.audit_id
    AND e.name = NEW.name AND e.version = NEW.version {extra})"""


def _sqlite_triggers() -> None:
    push = _BV_AUDITED.format(extra="AND e.action = 'push' AND e.digest = NEW.digest")
    staged = _BV_AUDITED.format(extra="AND e.id > COALESCE(OLD.audit_id, 0) "
                                      "AND e.to_stage = NEW.stage")
    about = _BV_AUDITED.format(extra="")
    refuse = f"BEGIN SELECT RAISE(ABORT, '{BV_REFUSAL}'); END"
    op.execute(f"""CREATE TRIGGER bundle_versions_insert_audited BEFORE INSERT ON
        bundle_versions WHEN NOT {push} {refuse}""")
    op.execute(f"""CREATE TRIGGER bundle_versions_update_audited BEFORE UPDATE ON
        bundle_versions WHEN NEW.id IS NOT OLD.id OR NEW.name IS NOT OLD.name
        OR NEW.version IS NOT OLD.version OR NEW.digest IS NOT OLD.digest
        OR (NEW.stage IS NOT OLD.stage AND NOT {staged})
        OR (NEW.audit_id IS NOT OLD.audit_id AND (NEW.audit_id IS NULL
            OR NEW.audit_id < COALESCE(OLD.audit_id, 0) OR NOT {about}))
        OR (OLD.was_production AND NOT NEW.was_production)
        OR (NEW.was_production AND NOT OLD.was_production AND NEW.stage IS NOT 'production')
        {refuse}""")
    op.execute(f"""CREATE TRIGGER approvals_insert_audited BEFORE INSERT ON approvals
        WHEN NOT EXISTS (SELECT 1 FROM audit_events e JOIN bundle_versions b
            ON b.id = NEW.bundle_id AND e.name = b.name AND e.version = b.version
            WHERE e.id = NEW.audit_id AND e.action = NEW.decision AND e.actor = NEW.user)
        BEGIN SELECT RAISE(ABORT, '{AP_REFUSAL}'); END""")
    for table in ("approvals", "decisions"):
        for event in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table}
                BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END""")


def _postgresql_triggers() -> None:
    op.execute(f"""
        CREATE FUNCTION bundle_versions_audited() RETURNS trigger AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            IF NOT {_BV_AUDITED.format(extra="AND e.action = 'push' AND e.digest = NEW.digest")}
            THEN RAISE EXCEPTION '{BV_REFUSAL}'; END IF;
            RETURN NEW;
          END IF;
          IF NEW.id <> OLD.id OR NEW.name <> OLD.name OR NEW.version <> OLD.version
             OR NEW.digest <> OLD.digest
             OR (NEW.stage IS DISTINCT FROM OLD.stage AND NOT {_BV_AUDITED.format(
                 extra="AND e.id > COALESCE(OLD.audit_id, 0) AND e.to_stage = NEW.stage")})
             OR (NEW.audit_id IS DISTINCT FROM OLD.audit_id AND (NEW.audit_id IS NULL
                 OR NEW.audit_id < COALESCE(OLD.audit_id, 0)
                 OR NOT {_BV_AUDITED.format(extra="")}))
             OR (OLD.was_production AND NOT NEW.was_production)
             OR (NEW.was_production AND NOT OLD.was_production AND NEW.stage <> 'production')
          THEN RAISE EXCEPTION '{BV_REFUSAL}'; END IF;
          RETURN NEW;
        END; $$ LANGUAGE plpgsql""")
    op.execute("""CREATE TRIGGER bundle_versions_audited BEFORE INSERT OR UPDATE ON
        bundle_versions FOR EACH ROW EXECUTE FUNCTION bundle_versions_audited()""")
    op.execute(f"""
        CREATE FUNCTION approvals_audited() RETURNS trigger AS $$
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM audit_events e JOIN bundle_versions b
              ON b.id = NEW.bundle_id AND e.name = b.name AND e.version = b.version
              WHERE e.id = NEW.audit_id AND e.action = NEW.decision AND e.actor = NEW."user")
          THEN RAISE EXCEPTION '{AP_REFUSAL}'; END IF;
          RETURN NEW;
        END; $$ LANGUAGE plpgsql""")
    op.execute("""CREATE TRIGGER approvals_audited BEFORE INSERT ON approvals
        FOR EACH ROW EXECUTE FUNCTION approvals_audited()""")
    for table in ("approvals", "decisions"):
        op.execute(f"""
            CREATE FUNCTION {table}_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{table} is append-only'; END; $$ LANGUAGE plpgsql""")
        op.execute(f"""CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_append_only()""")
        op.execute(f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()""")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("DROP TRIGGER bundle_versions_audited ON bundle_versions")
        op.execute("DROP FUNCTION bundle_versions_audited()")
        op.execute("DROP TRIGGER approvals_audited ON approvals")
        op.execute("DROP FUNCTION approvals_audited()")
        for table in ("approvals", "decisions"):
            op.execute(f"DROP TRIGGER {table}_no_change ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
            op.execute(f"DROP FUNCTION {table}_append_only()")
    else:
        for trigger in ("bundle_versions_insert_audited", "bundle_versions_update_audited",
                        "approvals_insert_audited", "approvals_no_update", "approvals_no_delete",
                        "decisions_no_update", "decisions_no_delete"):
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("decisions")
    op.drop_index("uq_approvals_audit_id", table_name="approvals")
    if postgresql:
        for table, column in (("approvals", "audit_id"), ("bundle_versions", "was_production"),
                              ("bundle_versions", "audit_id"), ("audit_events", "signature"),
                              ("audit_events", "hash"), ("audit_events", "prev_hash")):
            op.drop_column(table, column)
        return
    # SQLite drops a column by rebuilding the table, which loses the table's triggers.
    for table, columns in (("approvals", ["audit_id"]),
                           ("bundle_versions", ["was_production", "audit_id"]),
                           ("audit_events", ["signature", "hash", "prev_hash"])):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_column(column)
    _audit_triggers(enable=True, postgresql=False)
