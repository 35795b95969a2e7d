"""Issue 9, signed decisions (registry side), on SQLite and PostgreSQL.

Before: the registry only *stored* its decisions, so a direct ``UPDATE`` of a version's
stage in its database was followed by running engines within seconds. Now every action
appends the version's complete state signed with the registry's Ed25519 key (held in a
file, never in the database); an engine pinning the public key checks it with
``trust.verify_decision`` and ``trust.check_decision``. Someone who edits the database but
does not hold the key cannot produce a decision that passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import text

from baton.cli.main import main
from baton.errors import BatonError, NotApproved, StageNotAllowed, UntrustedDecision
from baton.registry.audit import verify_database
from baton.registry.db import MIGRATIONS
from baton.registry.service import Registry
from baton.trust import (
    Decision,
    check_decision,
    generate_signing_key,
    sign_decision,
    verify_decision,
)
from tests.registry.conftest import (  # noqa: F401  (fixtures used by name)
    ApiServer,
    MakeArchive,
    actor,
    approve,
    database_url,
    key_file,
    make_archive,
    make_registry,
    open_database,
    registry,
    serve_api,
    to_staging,
    unique,
)
from tests.security.registry_fixtures import OwnRegistry, own_registry  # noqa: F401


def decision_of(reg: Registry, ref: str) -> Decision:
    shown = reg.show(actor("viewer"), ref)
    return verify_decision(reg.signing_key.public, shown["decision"], ref=ref)


def last_event_id(reg: Registry, name: str) -> int:
    return int(reg.history(actor("viewer"), name)[-1]["id"])


def test_every_action_signs_the_versions_complete_state(
        make_registry: Any, make_archive: MakeArchive) -> None:  # noqa: F811
    reg = make_registry(approvals=2)
    name = unique("signed")
    v1, v2 = f"{name}@1", f"{name}@2"
    ds, op, first, second = actor("data-scientist"), actor("operator"), actor("approver"), \
        actor("approver")
    built = make_archive(name, "1")
    reg.push(ds, built.path)
    reg.push(ds, make_archive(name, "2").path)

    def expect(ref: str, stage: str, action: str, approvals: tuple[str, ...] = (),
               rejections: tuple[str, ...] = ()) -> Decision:
        d = decision_of(reg, ref)
        ev = [e for e in reg.history(actor("viewer"), name) if e["version"] == ref[-1]][-1]
        assert (d.name, d.version, d.stage, d.action) == (name, ref[-1], stage, action)
        assert (d.approvals, d.rejections, d.approvals_required) == (
            tuple(sorted(approvals)), tuple(sorted(rejections)), 2)
        assert (d.seq, d.time, d.digest) == (ev["id"], ev["time"], ev["digest"])
        return d

    assert expect(v1, "draft", "push").digest == built.digest
    reg.validate(op, v1)
    expect(v1, "validated", "validate")
    reg.promote(op, v1, "staging")
    expect(v1, "staging", "promote")
    reg.decide(first, v1, "approve", "ok")
    expect(v1, "staging", "approve", (first.name,))
    reg.decide(second, v1, "approve", "ok too")
    expect(v1, "staging", "approve", (first.name, second.name))
    reg.promote(op, v1, "production")
    expect(v1, "production", "promote", (first.name, second.name))

    to_staging(reg, v2, op)
    reg.decide(first, v2, "approve", "ok")
    reg.decide(second, v2, "reject", "drift")
    expect(v2, "staging", "reject", (first.name,), (second.name,))
    reg.promote(op, v2, "archived")
    expect(v2, "archived", "promote", (first.name,), (second.name,))
    # Listing carries the same signed decisions as showing.
    listed = {b["version"]: b["decision"] for b in reg.list(actor("viewer"), name)}
    assert listed == {v: reg.show(actor("viewer"), f"{name}@{v}")["decision"] for v in "12"}


def test_a_real_decision_passes_the_engines_check_for_its_stage_only(
        registry: Registry, make_archive: MakeArchive) -> None:  # noqa: F811
    name = unique("engine")
    ref = f"{name}@0.1.0"
    built = make_archive(name)
    registry.push(actor("data-scientist"), built.path)
    to_staging(registry, ref)
    staging = decision_of(registry, ref)
    check_decision(staging, name=name, digest=built.digest, stages=("staging",),
                   need_approvals=False)
    with pytest.raises(NotApproved):
        check_decision(staging, name=name, digest=built.digest, stages=("staging",),
                       need_approvals=True)
    approve(registry, ref)
    registry.promote(actor("operator"), ref, "production")

    live = decision_of(registry, ref)
    check_decision(live, name=name, digest=built.digest, stages=("production",),
                   need_approvals=True)
    with pytest.raises(StageNotAllowed):
        check_decision(live, name=name, digest=built.digest, stages=("staging",),
                       need_approvals=True)
    with pytest.raises(UntrustedDecision) as err:
        check_decision(live, name=name, digest="sha256:" + "0" * 64, stages=("production",),
                       need_approvals=True)
    assert err.value.code == "DECISION_MISMATCH"


def test_a_database_editor_cannot_produce_a_decision_an_engine_accepts(
        own_registry: Any, make_archive: MakeArchive, tmp_path: Path) -> None:  # noqa: F811
    own: OwnRegistry = own_registry()
    reg = own.registry
    name = unique("edited")
    ref = f"{name}@0.1.0"
    built = make_archive(name)
    reg.push(actor("data-scientist"), built.path)
    to_staging(reg, ref)
    key = reg.signing_key.public

    # Triggers dropped, the stage set to production: the latest signed decision still says
    # staging, so an engine serving production refuses it.
    if own.backend == "postgresql":
        own.sql("ALTER TABLE bundle_versions DISABLE TRIGGER USER")
        own.sql("ALTER TABLE decisions DISABLE TRIGGER USER")
    else:
        own.sql("DROP TRIGGER bundle_versions_update_audited")
        own.sql("DROP TRIGGER decisions_no_update")
    own.sql("UPDATE bundle_versions SET stage = 'production' WHERE name = :n", n=name)
    shown = reg.show(actor("viewer"), ref)
    assert shown["stage"] == "production"
    with pytest.raises(StageNotAllowed):
        check_decision(verify_decision(key, shown["decision"]), name=name,
                       digest=built.digest, stages=("production",), need_approvals=False)

    # Rewriting the decision's payload breaks its signature; a key of one's own is not the
    # pinned one.
    forged = Decision(name=name, version="0.1.0", digest=built.digest, stage="production",
                      approvals=("mallory",), seq=10**6, action="promote")
    own.sql("UPDATE decisions SET payload = :p", p=_b64(forged.payload()))
    with pytest.raises(UntrustedDecision) as err:
        verify_decision(key, reg.show(actor("viewer"), ref)["decision"])
    assert err.value.code == "BAD_SIGNATURE"
    mine = sign_decision(generate_signing_key(tmp_path / "mallory.key"), forged)
    with pytest.raises(UntrustedDecision):
        verify_decision(key, mine)


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_the_public_key_is_served_without_a_token_and_printed_by_the_cli(
        registry: Registry, serve_api: Any, key_file: Path) -> None:  # noqa: F811
    key = registry.signing_key.public
    resp = serve_api(registry).client().get("/key")
    assert resp.status_code == 200
    assert resp.json() == {"key": key.text, "key_id": key.key_id}
    result = CliRunner().invoke(main, ["registry", "key", "--key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{key.text}\nkey id {key.key_id}\n"
    missing = CliRunner().invoke(main, ["registry", "key", "--key-file",
                                        str(key_file.parent / "absent.key")])
    assert missing.exit_code == 1 and "SIGNING_KEY_MISSING" in missing.output


def test_the_key_is_created_at_bootstrap_and_never_stored_in_the_database(
        tmp_path: Path) -> None:
    env = {"BATON_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(main, ["registry", "bootstrap-admin", "root"], env=env)
    assert result.exit_code == 0, result.output
    made = tmp_path / "home" / "registry" / "signing.key"
    assert made.stat().st_mode & 0o777 == 0o600
    printed = CliRunner().invoke(main, ["registry", "key"], env=env).output.splitlines()[0]
    assert f"public key {printed}" in result.output  # announced when created
    pem = made.read_text().split("-----")[2].strip()
    database = (tmp_path / "home" / "registry" / "registry.db").read_bytes()
    assert pem.encode() not in database and pem.replace("\n", "").encode() not in database


# -- versions from before signing ------------------------------------------------------------

def test_versions_from_before_signing_stay_unsigned_until_acted_on(
        own_registry: Any, make_archive: MakeArchive) -> None:  # noqa: F811
    """A database editor could insert a row and wait for the registry to sign it: rows
    without a decision are never signed after the fact, only by a new action."""
    own: OwnRegistry = own_registry()
    reg = own.registry
    name = unique("legacy")
    _downgrade_to_0004(own)
    manifest = json.dumps({"bundle": {"name": name, "version": "1"}})
    own.sql("INSERT INTO models (name, created_at) VALUES (:n, CURRENT_TIMESTAMP)", n=name)
    for i, (version, stage) in enumerate((("1", "archived"), ("2", "production")), 1):
        own.sql("INSERT INTO bundle_versions (name, version, digest, stage, author, "
                "description, size, manifest, created_at, updated_at) VALUES (:n, :v, :d, "
                ":s, 'dana', '', 1, :m, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)", n=name,
                v=version, d=f"sha256:{str(i) * 64}", s=stage, m=manifest)
        for to in ("draft", "production", "archived")[: 3 if stage == "archived" else 2]:
            own.sql("INSERT INTO audit_events (time, actor, action, name, version, "
                    "to_stage, reason) VALUES (CURRENT_TIMESTAMP, 'olga', 'promote', :n, :v, "
                    ":to, '')", n=name, v=version, to=to)
    reg.db.migrate()

    for version in ("1", "2"):
        assert reg.show(actor("viewer"), f"{name}@{version}")["decision"] is None
    with reg.db.session() as s:
        report = verify_database(s, reg.signing_key.public, None)
    assert (report.count, report.unsigned) == (5, 5)  # chained by the migration, unsigned
    # Its history showed version 1 in production: going back to it is a rollback for the
    # lifecycle (what stops it here is the approval rule).
    with pytest.raises(BatonError) as err:
        reg.promote(actor("operator"), f"{name}@1", "production")
    assert err.value.code == "NOT_ENOUGH_APPROVALS"
    reg.promote(actor("operator"), f"{name}@2", "archived", "retired")
    signed = decision_of(reg, f"{name}@2")
    assert (signed.stage, signed.action) == ("archived", "promote")
    assert reg.show(actor("viewer"), f"{name}@1")["decision"] is None
    with reg.db.session() as s:
        report = verify_database(s, reg.signing_key.public, reg.head_file)
    assert (report.count, report.unsigned) == (6, 5)


def _downgrade_to_0004(own: OwnRegistry) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with own.registry.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    with own.registry.db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"

