"""Stages, the check that validates, approvals, separation of duties, rollback and the
audit trail they leave (service level, on both back ends)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from baton.errors import BatonError
from baton.registry.service import Actor, Registry

from .conftest import MakeArchive, MakeRegistry, StubCheck, actor, approve, to_staging, unique


def error_of(fn: Any, *args: Any) -> BatonError:
    with pytest.raises(BatonError) as err:
        fn(*args)
    return err.value


def last_event(reg: Registry, name: str) -> dict[str, Any]:
    return reg.history(actor("viewer"), name)[-1]


# -- draft -> validated: only by a passing `baton check` -----------------------------------

def test_a_passing_check_validates_and_its_report_is_kept(
        make_registry: MakeRegistry, real_check: Any, make_archive: MakeArchive) -> None:
    reg, name, op = make_registry(check=real_check), unique("checked"), actor("operator")
    built = make_archive(name)
    reg.push(actor("data-scientist"), built.path)

    result = reg.promote(op, f"{name}@0.1.0", "validated")
    assert result["stage"] == "validated"
    report = result["check_report"]
    assert report["passed"] is True and report["failed_stage"] is None
    assert report["bundle"]["digest"] == built.digest  # the stored content was checked
    assert [s["stage"] for s in report["stages"]][-1] == "latency"  # every stage ran
    assert reg.show(actor("viewer"), f"{name}@0.1.0")["check_report"] == report

    event = last_event(reg, name)
    assert (event["action"], event["actor"], event["from"], event["to"], event["reason"]) == (
        "validate", op.name, "draft", "validated", "check passed")
    assert event["details"] == {"passed": True, "failed_stage": None}
    err = error_of(reg.validate, op, f"{name}@0.1.0")
    assert (err.code, err.http_status) == ("INVALID_TRANSITION", 409)


def test_a_failing_check_leaves_a_draft_with_the_failing_report(
        make_registry: MakeRegistry, real_check: Any, make_archive: MakeArchive) -> None:
    reg, name, op = make_registry(check=real_check), unique("failing"), actor("operator")
    reg.push(actor("data-scientist"), make_archive(name, wrong_expected=True).path)

    result = reg.validate(op, name)
    assert result["stage"] == "draft"
    report = reg.show(actor("viewer"), name)["check_report"]
    assert report == result["check_report"]
    assert report["passed"] is False and report["failed_stage"] == "sample_mismatch"
    assert report["sample_mismatches"] == [
        {"record": 1, "field": "score", "expected": 0.7, "got": 0.75}]
    event = last_event(reg, name)
    assert (event["action"], event["from"], event["to"], event["reason"]) == (
        "validate", "draft", "draft", "check failed at sample_mismatch")
    err = error_of(reg.promote, op, f"{name}@0.1.0", "staging")
    assert err.code == "INVALID_TRANSITION"
    assert reg.show(actor("viewer"), name)["stage"] == "draft"


def test_validation_runs_the_check_on_the_stored_content(
        make_registry: MakeRegistry, make_archive: MakeArchive) -> None:
    check = StubCheck(passed=False)
    reg, name = make_registry(check=check), unique("stub")
    built = make_archive(name)
    reg.push(actor("data-scientist"), built.path)
    assert reg.promote(actor("data-scientist"), name + "@0.1.0", "validated")["stage"] == "draft"
    assert check.checked == [built.digest]
    for role in ("viewer", "approver"):
        err = error_of(reg.validate, actor(role), name)
        assert (err.code, err.http_status) == ("FORBIDDEN", 403)
    assert check.checked == [built.digest]


def test_without_a_check_runner_nothing_is_validated(
        open_database: Any, tmp_path: Any, make_archive: MakeArchive, signing_key: Any) -> None:
    from baton.registry.blobs import BlobStore

    reg = Registry(open_database(), BlobStore(tmp_path / "b"), signing_key)
    name = unique("nocheck")
    reg.push(actor("data-scientist"), make_archive(name).path)
    err = error_of(reg.validate, actor("operator"), name)
    assert (err.code, err.http_status) == ("CHECK_UNAVAILABLE", 503)
    assert reg.show(actor("viewer"), name)["stage"] == "draft"


# -- promotions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "to", "message"), [
    ("draft", "staging", "would skip validated"),
    ("draft", "production", "would skip validated, staging"),
    ("validated", "production", "would skip staging"),
    ("staging", "draft", "cannot go from staging to draft"),
    ("archived", "staging", "cannot go from archived to staging"),
    # validated -> archived -> production is not a rollback: it was never in production.
    ("archived", "production", "archived and was never in production"),
])
def test_a_promotion_that_skips_or_reverses_a_stage_is_refused(
        registry: Registry, make_archive: MakeArchive, start: str, to: str,
        message: str) -> None:
    name, op = unique("skip"), actor("operator")
    ref = f"{name}@0.1.0"
    registry.push(actor("data-scientist"), make_archive(name).path)
    if start != "draft":
        registry.validate(op, ref)
        approve(registry, ref)  # approvals are not what refuses it
    if start in ("staging", "archived"):
        registry.promote(op, ref, start)
    events = registry.count_events()

    err = error_of(registry.promote, op, ref, to)
    assert (err.code, err.http_status, err.exit_code) == ("INVALID_TRANSITION", 409, 7)
    assert err.details == {"from": start, "to": to}
    assert message in err.message
    assert registry.show(actor("viewer"), ref)["stage"] == start
    assert registry.count_events() == events


def test_an_unknown_stage_is_a_bad_request(registry: Registry, make_archive: MakeArchive) -> None:
    name = unique("stage")
    registry.push(actor("data-scientist"), make_archive(name).path)
    err = error_of(registry.promote, actor("operator"), name + "@0.1.0", "gold")
    assert (err.code, err.http_status, err.exit_code) == ("INVALID_STAGE", 400, 2)


def test_production_needs_enough_approvals_from_approvers_who_are_not_the_author(
        make_registry: MakeRegistry, make_archive: MakeArchive) -> None:
    reg, name = make_registry(approvals=2), unique("approvals")
    ref, author, op = f"{name}@0.1.0", actor("admin"), actor("operator")
    first, second = actor("approver"), actor("approver")
    reg.push(author, make_archive(name).path)
    to_staging(reg, ref, op)

    err = error_of(reg.promote, op, ref, "production")
    assert (err.code, err.http_status) == ("NOT_ENOUGH_APPROVALS", 409)
    assert err.details == {"approvals": [], "required": 2}
    err = error_of(reg.decide, author, ref, "approve", "my own work is fine")
    assert (err.code, err.http_status, err.exit_code) == ("SEPARATION_OF_DUTIES", 403, 6)
    err = error_of(reg.decide, actor("data-scientist"), ref, "approve", "fine")
    assert (err.code, err.http_status) == ("FORBIDDEN", 403)

    shown = reg.decide(first, ref, "approve", "metrics reviewed")
    assert [(a["user"], a["decision"], a["reason"]) for a in shown["approvals"]] == [
        (first.name, "approve", "metrics reviewed")]
    err = error_of(reg.decide, first, ref, "approve", "again")
    assert (err.code, err.http_status) == ("ALREADY_DECIDED", 409)
    err = error_of(reg.promote, op, ref, "production")
    assert err.code == "NOT_ENOUGH_APPROVALS" and "1 of the 2" in err.message
    assert err.details == {"approvals": [first.name], "required": 2}
    assert reg.show(actor("viewer"), ref)["stage"] == "staging"

    reg.decide(second, ref, "approve", "fairness reviewed")
    assert reg.promote(op, ref, "production", "go live")["stage"] == "production"
    events = reg.history(actor("viewer"), name)
    assert [(e["action"], e["actor"], e["from"], e["to"], e["reason"]) for e in events[-3:]] == [
        ("approve", first.name, "staging", "staging", "metrics reviewed"),
        ("approve", second.name, "staging", "staging", "fairness reviewed"),
        ("promote", op.name, "staging", "production", "go live")]


def test_a_decision_needs_a_reason_and_a_validated_or_staging_bundle(
        registry: Registry, make_archive: MakeArchive) -> None:
    name = unique("decide")
    registry.push(actor("data-scientist"), make_archive(name).path)
    err = error_of(registry.decide, actor("approver"), name, "approve", "  ")
    assert (err.code, err.http_status) == ("REASON_REQUIRED", 400)
    err = error_of(registry.decide, actor("approver"), name, "approve", "ok")
    assert (err.code, err.http_status) == ("INVALID_TRANSITION", 409)
    assert registry.show(actor("viewer"), name)["approvals"] == []


def test_a_rejection_blocks_production(registry: Registry, make_archive: MakeArchive) -> None:
    name, op, critic = unique("rejected"), actor("operator"), actor("approver")
    ref = f"{name}@0.1.0"
    registry.push(actor("data-scientist"), make_archive(name).path)
    to_staging(registry, ref, op)
    approve(registry, ref)
    registry.decide(critic, ref, "reject", "drift on the FR segment")

    err = error_of(registry.promote, op, ref, "production")
    assert (err.code, err.http_status) == ("REJECTED", 409)
    assert err.details == {"by": critic.name, "reason": "drift on the FR segment"}
    assert registry.show(actor("viewer"), ref)["stage"] == "staging"
    event = last_event(registry, name)
    assert (event["action"], event["actor"], event["reason"]) == (
        "reject", critic.name, "drift on the FR segment")


def test_a_new_production_version_archives_the_old_and_rollback_restores_it(
        registry: Registry, make_archive: MakeArchive) -> None:
    name, op, viewer = unique("rollout"), actor("operator"), actor("viewer")
    v1, v2 = f"{name}@1", f"{name}@2"
    for version in ("1", "2"):
        registry.push(actor("data-scientist"), make_archive(name, version).path)
    for ref in (v1, v2):
        to_staging(registry, ref, op)
        approve(registry, ref)
    registry.promote(op, v1, "production")
    mark = registry.history(viewer, name)[-1]["id"]

    registry.promote(op, v2, "production", "better recall")
    assert {b["version"]: b["stage"] for b in registry.list(viewer, name)} == {
        "1": "archived", "2": "production"}
    assert [(e["action"], e["actor"], e["version"], e["from"], e["to"], e["reason"])
            for e in registry.history(viewer, name, since_id=mark)] == [
        ("archive", op.name, "1", "production", "archived", "replaced by 2 in production"),
        ("promote", op.name, "2", "staging", "production", "better recall")]
    mark = registry.history(viewer, name)[-1]["id"]

    registry.promote(op, v1, "production", "v2 misbehaves")  # rollback
    assert [b["version"] for b in registry.list(viewer, name, "production")] == ["1"]
    assert registry.show(viewer, v2)["stage"] == "archived"
    assert [(e["action"], e["version"], e["from"], e["to"])
            for e in registry.history(viewer, name, since_id=mark)] == [
        ("archive", "2", "production", "archived"), ("rollback", "1", "archived", "production")]


# -- the audit trail ---------------------------------------------------------------------------

def test_every_action_appends_one_event_with_who_when_what_and_why(
        registry: Registry, make_archive: MakeArchive) -> None:
    name, ds, op, admin = unique("trail"), actor("data-scientist"), actor("operator"), \
        actor("admin")
    user, ref = unique("newcomer"), f"{name}@0.1.0"
    checker = actor("approver")
    steps: list[tuple[Actor, str, Any, str | None, str | None, str]] = [
        (ds, "push", lambda: registry.push(ds, make_archive(name).path), None, "draft", ""),
        (op, "validate", lambda: registry.validate(op, ref), "draft", "validated",
         "check passed"),
        (op, "promote", lambda: registry.promote(op, ref, "staging", "to staging"),
         "validated", "staging", "to staging"),
        (checker, "approve", lambda: registry.decide(checker, ref, "approve", "ok"),
         "staging", "staging", "ok"),
        (op, "promote", lambda: registry.promote(op, ref, "production", "release"), "staging",
         "production", "release"),
        (op, "promote", lambda: registry.promote(op, ref, "archived", "retired"),
         "production", "archived", "retired"),
        (admin, "create-user", lambda: registry.create_user(admin, user, "viewer"), None, None,
         ""),
        (admin, "create-token", lambda: registry.create_token(admin, user, days=1), None, None,
         ""),
    ]
    for who, action, run, from_stage, to_stage, reason in steps:
        before_count, before = registry.count_events(), dt.datetime.now(dt.UTC)
        run()
        after = dt.datetime.now(dt.UTC)
        assert registry.count_events() == before_count + 1, action
        event = registry.history(actor("viewer"))[-1]
        assert (event["actor"], event["action"], event["from"], event["to"],
                event["reason"]) == (who.name, action, from_stage, to_stage, reason)
        assert before <= dt.datetime.fromisoformat(event["time"]) <= after
        if event["name"] is not None:
            assert (event["name"], event["version"]) == (name, "0.1.0")
    details = [e["details"] for e in registry.history(actor("viewer"))[-2:]]
    token_id = details[1].pop("token_id")
    assert isinstance(token_id, int)
    assert details == [{"user": user, "role": "viewer"},
                       {"user": user, "days": 1, "scopes": ["read"], "service": False,
                        "label": ""}]
