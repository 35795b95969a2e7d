"""Issue 9, the audit log and the database: each break reproduced first, on SQLite and
PostgreSQL.

- The audit log refused UPDATE and DELETE, but accepted forged back-dated INSERTs, and its
  triggers could be dropped: now every entry is hash-chained and signed, and
  ``baton audit verify`` names the first entry inserted, altered or removed.
- Stage and approval tables had no protection: a direct ``UPDATE bundle_versions SET
  stage = 'production'`` went through. Now the database refuses a stage change, a version
  or an approval without its audit event, and approvals and decisions are append-only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from baton.cli.main import main
from baton.errors import BatonError
from baton.registry.audit import chain_hash
from baton.registry.client import RegistryClient
from baton.registry.service import Registry
from tests.registry.conftest import (  # noqa: F401  (fixtures used by name)
    ApiServer,
    MakeArchive,
    actor,
    approve,
    database_url,
    make_archive,
    make_registry,
    open_database,
    registry,
    serve_api,
    to_staging,
    unique,
)
from tests.security.registry_fixtures import OwnRegistry, own_registry  # noqa: F401

MakeOwn = Callable[..., OwnRegistry]


def some_history(reg: Registry, make_archive: MakeArchive) -> str:  # noqa: F811
    """Push, validate, stage, approve, promote, and a user: eight chained entries."""
    name = unique("audited")
    ref = f"{name}@0.1.0"
    admin = actor("admin")
    reg.push(actor("data-scientist"), make_archive(name).path)
    to_staging(reg, ref)
    approve(reg, ref)
    reg.promote(actor("operator"), ref, "production", "release")
    reg.create_user(admin, unique("someone"), "viewer")
    reg.create_user(admin, unique("another"), "viewer")
    return name


def events(own: OwnRegistry) -> list[dict[str, Any]]:
    return own.registry.history(actor("viewer"))


def assert_names(result: Any, entry: int, reason: str) -> None:
    assert result.exit_code == 9, result.output
    assert f"error [AUDIT_CHAIN_BROKEN]: audit entry {entry}: " in result.output
    assert reason in result.output


# -- the intact chain ------------------------------------------------------------------------

def test_an_intact_log_verifies_with_its_count_and_head(
        own_registry: MakeOwn, make_archive: MakeArchive) -> None:  # noqa: F811
    own = own_registry()
    some_history(own.registry, make_archive)
    log = events(own)
    assert [e["id"] for e in log] == list(range(1, len(log) + 1))
    assert log[0]["prev_hash"] == "" and all(
        e["prev_hash"] == p["hash"] for p, e in zip(log, log[1:], strict=False))
    result = own.verify_locally()
    assert result.exit_code == 0, result.output
    assert result.output == (f"audit log intact: {len(log)} entries; head #{log[-1]['id']} "
                             f"{log[-1]['hash']}\n")


# -- inserted -----------------------------------------------------------------------------------

@pytest.mark.parametrize("forgery", ["unhashed", "hashed by the forger", "before the first"])
def test_a_back_dated_insert_is_named(own_registry: MakeOwn, make_archive: MakeArchive,  # noqa: F811
                                      forgery: str) -> None:
    own = own_registry()
    name = some_history(own.registry, make_archive)
    log = events(own)
    forged = {"id": 0 if forgery == "before the first" else log[-1]["id"] + 1,
              "time": "2020-01-01T00:00:00+00:00", "actor": "mallory", "action": "approve",
              "name": name, "version": "0.1.0", "digest": log[0]["digest"], "from": "staging",
              "to": "staging", "reason": "approved long ago", "details": {}}
    hashed = forgery == "hashed by the forger"
    digest = chain_hash(log[-1]["hash"], forged) if hashed else None
    # INSERT is what the append-only triggers allow: no trigger needs to be dropped.
    own.sql("INSERT INTO audit_events (id, time, actor, action, name, version, digest, "
            "from_stage, to_stage, reason, prev_hash, hash, signature) VALUES (:id, :time, "
            ":actor, :action, :name, '0.1.0', :digest, 'staging', 'staging', :reason, :prev, "
            ":hash, :sig)", id=forged["id"], time=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            actor="mallory", action="approve", name=name, digest=forged["digest"],
            reason=forged["reason"], prev=log[-1]["hash"] if hashed else None, hash=digest,
            sig="c2lnbmVk" if hashed else None)
    reason = "is not signed by the registry key" if hashed else "inserted without the registry"
    assert_names(own.verify_locally(), forged["id"], reason)


# -- altered ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rehashed", [False, True])
def test_an_altered_entry_is_named_even_with_its_trigger_dropped(
        own_registry: MakeOwn, make_archive: MakeArchive, rehashed: bool) -> None:  # noqa: F811
    own = own_registry()
    some_history(own.registry, make_archive)
    target = events(own)[3]
    own.drop_append_only_triggers()
    own.sql("UPDATE audit_events SET actor = 'mallory' WHERE id = :id", id=target["id"])
    if rehashed:  # the editor recomputes the hash too, but cannot sign it
        own.sql("UPDATE audit_events SET hash = :h WHERE id = :id", id=target["id"],
                h=chain_hash(target["prev_hash"], {**target, "actor": "mallory"}))
        assert_names(own.verify_locally(), target["id"], "is not signed by the registry key")
    else:
        assert_names(own.verify_locally(), target["id"], "does not match its hash (altered)")


# -- removed ------------------------------------------------------------------------------------

def test_a_removed_entry_is_named_even_with_its_trigger_dropped(
        own_registry: MakeOwn, make_archive: MakeArchive) -> None:  # noqa: F811
    own = own_registry()
    some_history(own.registry, make_archive)
    target = events(own)[2]["id"]
    own.drop_append_only_triggers()
    own.sql("DELETE FROM audit_events WHERE id = :id", id=target)
    assert_names(own.verify_locally(), target, f"missing: ids jump from {target - 1}")


def test_removing_the_newest_entries_is_found_by_the_signed_head_and_stops_writes(
        own_registry: MakeOwn, make_archive: MakeArchive, serve_api: Any,  # noqa: F811
        tmp_path: Path) -> None:
    own = own_registry()
    some_history(own.registry, make_archive)
    log = events(own)
    token = own.registry.bootstrap_admin(unique("root"))
    server = serve_api(own.registry)
    remote = remote_verifier(server.url, token, own.registry, tmp_path)
    assert remote().exit_code == 0

    own.drop_append_only_triggers()
    first_removed = log[-1]["id"] - 1
    own.sql("DELETE FROM audit_events WHERE id >= :id", id=first_removed)
    # What is left is a valid chain; only the signed head shows that it was longer.
    assert_names(own.verify_locally(), first_removed, "the newest entries were removed")
    assert_names(remote(), first_removed, "the newest entries were removed")
    with pytest.raises(BatonError) as err:
        own.registry.create_user(actor("admin"), unique("late"), "viewer")
    assert (err.value.code, err.value.exit_code) == ("AUDIT_CHAIN_BROKEN", 9)
    client = RegistryClient(server.url, token)
    try:
        with pytest.raises(BatonError) as err:
            client.create_user(unique("late"), "viewer")
    finally:
        client.close()
    assert (err.value.code, err.value.http_status, err.value.exit_code) == (
        "AUDIT_CHAIN_BROKEN", 500, 9)
    assert len(events(own)) == first_removed - 1  # nothing was chained onto the cut log


def remote_verifier(url: str, token: str, reg: Registry, tmp_path: Path) -> Callable[..., Any]:
    """``baton audit verify`` against the API, with the registry key pinned."""
    env = {"BATON_REGISTRY": url, "BATON_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)}

    def run(key: str | None = None) -> Any:
        pinned = key or reg.signing_key.public.text
        return CliRunner().invoke(main, ["audit", "verify", "--registry-key", pinned], env=env)

    return run


def test_remote_verification_pins_the_registry_key(
        own_registry: MakeOwn, make_archive: MakeArchive, serve_api: Any,  # noqa: F811
        tmp_path: Path) -> None:
    from baton.trust import generate_signing_key

    own = own_registry()
    some_history(own.registry, make_archive)
    token = own.registry.bootstrap_admin(unique("root"))
    remote = remote_verifier(serve_api(own.registry).url, token, own.registry, tmp_path)
    result = remote()
    assert result.exit_code == 0, result.output
    head = events(own)[-1]
    assert f"entries; head #{head['id']} {head['hash']}" in result.output

    other = generate_signing_key(tmp_path / "other.key").public.text
    result = remote(other)
    assert result.exit_code == 9, result.output
    assert "AUDIT_CHAIN_BROKEN" in result.output and "not signed by key" in result.output


# -- the database refuses state without its audit event ------------------------------------------

def refused(reg: Registry, statement: str, match: str = "audit event", **params: Any) -> None:
    with pytest.raises(DBAPIError, match=match), reg.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def staged(reg: Registry, make_archive: MakeArchive) -> tuple[str, str]:  # noqa: F811
    name = unique("guarded")
    reg.push(actor("data-scientist"), make_archive(name).path)
    to_staging(reg, f"{name}@0.1.0")
    return name, f"{name}@0.1.0"


def test_a_direct_stage_update_is_refused_by_the_database(
        registry: Registry, make_archive: MakeArchive) -> None:  # noqa: F811
    name, ref = staged(registry, make_archive)
    where = "WHERE name = :n"
    refused(registry, f"UPDATE bundle_versions SET stage = 'production' {where}", n=name)
    # Pointing audit_id at an older event of the version does not help either...
    refused(registry, "UPDATE bundle_versions SET stage = 'production', audit_id = "
                      f"(SELECT min(id) FROM audit_events WHERE name = :n) {where}", n=name)
    # ...nor does an event about another version, nor changing what a version is.
    refused(registry, "UPDATE bundle_versions SET stage = 'production', audit_id = "
                      f"(SELECT max(id) FROM audit_events) + 0 {where}", n=name)
    refused(registry, f"UPDATE bundle_versions SET digest = 'sha256:{'0' * 64}' {where}",
            n=name)
    refused(registry, f"UPDATE bundle_versions SET was_production = TRUE {where}", n=name)
    assert registry.show(actor("viewer"), ref)["stage"] == "staging"


def test_versions_and_approvals_are_inserted_only_with_their_audit_event(
        registry: Registry, make_archive: MakeArchive) -> None:  # noqa: F811
    name, ref = staged(registry, make_archive)
    refused(registry, "INSERT INTO bundle_versions (name, version, digest, stage, author, "
                      "description, size, manifest, created_at, updated_at, was_production) "
                      "SELECT name, '9.9.9', digest, 'production', author, description, size, "
                      "manifest, created_at, updated_at, FALSE FROM bundle_versions "
                      "WHERE name = :n", n=name)
    refused(registry, 'INSERT INTO approvals (bundle_id, "user", decision, reason, created_at, '
                      "audit_id) SELECT id, 'mallory', 'approve', 'trust me', created_at, "
                      "audit_id FROM bundle_versions WHERE name = :n", n=name)
    assert registry.show(actor("viewer"), ref)["approvals"] == []
    assert [b["version"] for b in registry.list(actor("viewer"), name)] == ["0.1.0"]


@pytest.mark.parametrize("table", ["approvals", "decisions"])
@pytest.mark.parametrize("statement", ["UPDATE {t} SET bundle_id = bundle_id", "DELETE FROM {t}"])
def test_approvals_and_decisions_are_append_only(
        registry: Registry, make_archive: MakeArchive, table: str,  # noqa: F811
        statement: str) -> None:
    name, ref = staged(registry, make_archive)
    approve(registry, ref)
    before = registry.show(actor("viewer"), ref)
    refused(registry, statement.format(t=table) + " WHERE bundle_id IN (SELECT id FROM "
            "bundle_versions WHERE name = :n)", match="append-only", n=name)
    assert registry.show(actor("viewer"), ref) == before


def test_concurrent_writers_never_fork_the_chain(make_registry: Any) -> None:  # noqa: F811
    """Eight registries (one engine each, as separate server processes would have) append
    at once: every write succeeds and the chain has no fork and no gap."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from baton.registry.audit import verify_database

    writers = [make_registry() for _ in range(8)]
    barrier = Barrier(len(writers))

    def write(reg: Registry) -> list[str]:
        barrier.wait()
        return [reg.create_user(actor("admin"), unique("racer"), "viewer")["name"]
                for _ in range(5)]

    with ThreadPoolExecutor(len(writers)) as pool:
        made = [name for names in pool.map(write, writers) for name in names]
    reg = writers[0]
    log = reg.history(actor("viewer"))
    assert {e["details"]["user"] for e in log if e["action"] == "create-user"} >= set(made)
    assert [e["id"] for e in log] == list(range(log[0]["id"], log[0]["id"] + len(log)))
    with reg.db.session() as s:
        report = verify_database(s, reg.signing_key.public, reg.head_file)
    assert report.head_id == log[-1]["id"]
