"""The registry's database: the Alembic migration and the append-only audit log, on both
back ends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from baton.registry.db import Database
from baton.registry.service import Registry
from tests.conftest import migration_head

from .conftest import MakeArchive, actor, unique

TABLES = {"users", "tokens", "models", "bundle_versions", "approvals", "audit_events",
          "decisions"}


def test_migration_creates_the_schema_and_is_idempotent(
        open_database: Callable[[], Database]) -> None:
    db = open_database()
    db.migrate()  # already at head (the fixture migrated): a second run changes nothing
    with db.engine.connect() as conn:
        assert TABLES <= set(inspect(conn).get_table_names())
        heads = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert heads == [migration_head()]


def _one_event(registry: Registry, make_archive: MakeArchive) -> tuple[int, str]:
    name = unique("audit")
    registry.push(actor("data-scientist"), make_archive(name).path)
    event = registry.history(actor("viewer"), name)[-1]
    return event["id"], event["reason"]


@pytest.mark.parametrize("statement", [
    "UPDATE audit_events SET reason = 'rewritten', actor = 'someone-else' WHERE id = :id",
    "DELETE FROM audit_events WHERE id = :id",
])
def test_audit_log_refuses_update_and_delete(registry: Registry, make_archive: MakeArchive,
                                             statement: str) -> None:
    event_id, reason = _one_event(registry, make_archive)
    with pytest.raises(DBAPIError, match="append-only"), registry.db.engine.begin() as conn:
        conn.execute(text(statement), {"id": event_id})
    with registry.db.engine.connect() as conn:
        row = conn.execute(text("SELECT actor, reason FROM audit_events WHERE id = :id"),
                           {"id": event_id}).one()
    assert row.reason == reason and row.actor != "someone-else"


@pytest.mark.parametrize("statement", ["DELETE FROM audit_events", "TRUNCATE audit_events"])
def test_audit_log_cannot_be_emptied(registry: Registry, make_archive: MakeArchive,
                                     backend: str, statement: str) -> None:
    if backend == "sqlite" and statement.startswith("TRUNCATE"):
        statement = "DELETE FROM audit_events WHERE 1"  # SQLite's spelling of emptying a table
    _one_event(registry, make_archive)
    before = registry.count_events()
    with pytest.raises(DBAPIError, match="append-only"), registry.db.engine.begin() as conn:
        conn.execute(text(statement))
    assert registry.count_events() == before
