"""The registry's content rules: immutable versions, idempotent pushes, pulls by version
and by digest, listing, showing and history (service level, real database and blob store)."""

from __future__ import annotations

import datetime as dt

import pytest

from baton.bundle.archive import verify_archive
from baton.errors import BatonError
from baton.registry.auth import Forbidden
from baton.registry.service import Actor, Registry

from .conftest import MakeArchive, actor, unique


def test_push_stores_a_draft_and_the_same_content_again_changes_nothing(
        registry: Registry, make_archive: MakeArchive) -> None:
    name, ds = unique("push"), actor("data-scientist")
    built = make_archive(name)
    desc, created = registry.push(ds, built.path)
    assert created is True
    assert (desc["name"], desc["version"], desc["stage"]) == (name, "0.1.0", "draft")
    assert desc["digest"] == built.digest and desc["author"] == ds.name
    assert desc["size"] == built.path.stat().st_size
    assert desc["description"] == "A custom Python model: edit model/predict.py"

    rebuilt = make_archive(name)  # another build of the same content: the same digest
    assert rebuilt.path != built.path and rebuilt.digest == built.digest
    again, created = registry.push(actor("data-scientist"), rebuilt.path)
    assert created is False
    assert again["digest"] == built.digest and again["author"] == ds.name
    assert [b["version"] for b in registry.list(ds, name)] == ["0.1.0"]
    assert [e["action"] for e in registry.history(ds, name)] == ["push"]


def test_different_content_under_an_existing_version_is_refused(
        registry: Registry, make_archive: MakeArchive) -> None:
    name, ds = unique("immutable"), actor("data-scientist")
    first = make_archive(name)
    registry.push(ds, first.path)
    events = registry.count_events()
    changed = make_archive(name, variant="retrained")
    assert changed.digest != first.digest
    with pytest.raises(BatonError) as err:
        registry.push(ds, changed.path)
    assert (err.value.code, err.value.http_status) == ("IMMUTABLE_VERSION", 409)
    assert err.value.details == {"existing": first.digest, "pushed": changed.digest}
    assert "bump the version" in err.value.message
    assert registry.show(ds, f"{name}@0.1.0")["digest"] == first.digest
    assert registry.count_events() == events

    bumped, created = registry.push(ds, make_archive(name, "0.2.0", variant="retrained").path)
    assert created and bumped["version"] == "0.2.0"


def test_pull_by_version_and_by_digest(registry: Registry, make_archive: MakeArchive) -> None:
    name, viewer = unique("pull"), actor("viewer")
    v1, v2 = make_archive(name, "1.0"), make_archive(name, "2.0")
    registry.push(actor("data-scientist"), v1.path)
    registry.push(actor("data-scientist"), v2.path)

    desc, path = registry.archive_path(viewer, f"{name}@1.0")
    assert desc["digest"] == v1.digest and verify_archive(path, v1.digest) == v1.digest
    assert path.read_bytes() == v1.path.read_bytes()
    desc, path = registry.archive_path(viewer, f"{name}@{v2.digest}")
    assert desc["version"] == "2.0" and verify_archive(path) == v2.digest

    for ref in (f"{name}@3.0", f"{name}@sha256:{'0' * 64}", f"{unique('other')}@{v1.digest}",
                f"{name}@{v1.digest[:20]}"):
        with pytest.raises(BatonError) as err:
            registry.archive_path(viewer, ref)
        assert (err.value.code, err.value.http_status) == ("BUNDLE_NOT_FOUND", 404), ref


def test_list_filters_by_name_and_stage(registry: Registry, make_archive: MakeArchive) -> None:
    a, b, viewer = unique("list-a"), unique("list-b"), actor("viewer")
    for name, version in ((a, "1"), (a, "2"), (b, "1")):
        registry.push(actor("data-scientist"), make_archive(name, version).path)
    registry.validate(actor("operator"), f"{a}@2")

    assert [(x["name"], x["version"]) for x in registry.list(viewer, a)] == [(a, "1"), (a, "2")]
    assert [x["version"] for x in registry.list(viewer, a, "validated")] == ["2"]
    assert [x["version"] for x in registry.list(viewer, a, "draft")] == ["1"]
    assert [x["name"] for x in registry.list(viewer, b)] == [b]
    everything = {(x["name"], x["version"]) for x in registry.list(viewer)}
    assert {(a, "1"), (a, "2"), (b, "1")} <= everything
    assert registry.list(viewer, unique("nothing")) == []


def test_show_gives_the_latest_or_the_named_version_in_full(
        registry: Registry, make_archive: MakeArchive) -> None:
    name, viewer = unique("show"), actor("viewer")
    registry.push(actor("data-scientist"), make_archive(name, "1.0").path)
    v2 = make_archive(name, "2.0")
    registry.push(actor("data-scientist"), v2.path)

    latest = registry.show(viewer, name)
    assert latest["version"] == "2.0" and latest["digest"] == v2.digest
    assert latest["approvals"] == [] and latest["check_report"] is None
    assert latest["manifest"]["bundle"]["name"] == name
    assert latest["manifest"]["bundle"]["version"] == "2.0"
    for stamp in (latest["created_at"], latest["updated_at"]):
        assert dt.datetime.fromisoformat(stamp).tzinfo is not None
    assert registry.show(viewer, f"{name}@1.0")["version"] == "1.0"
    assert registry.show(viewer, f"{name}@{v2.digest}")["version"] == "2.0"
    with pytest.raises(BatonError) as err:
        registry.show(viewer, unique("missing"))
    assert err.value.code == "BUNDLE_NOT_FOUND"


def test_history_lists_the_model_events_in_order(registry: Registry,
                                                 make_archive: MakeArchive) -> None:
    name, other, ds = unique("hist"), unique("hist-other"), actor("data-scientist")
    registry.push(ds, make_archive(name, "1").path)
    registry.push(ds, make_archive(other, "1").path)
    registry.push(ds, make_archive(name, "2").path)
    events = registry.history(actor("viewer"), name)
    assert [(e["action"], e["version"], e["to"]) for e in events] == [
        ("push", "1", "draft"), ("push", "2", "draft")]
    assert all(e["name"] == name and e["actor"] == ds.name for e in events)
    assert events[0]["id"] < events[1]["id"]
    since = registry.history(actor("viewer"), name, since_id=events[0]["id"])
    assert [e["version"] for e in since] == ["2"]


def test_pushing_needs_a_role_that_may_push(registry: Registry,
                                            make_archive: MakeArchive) -> None:
    name = unique("role")
    for role in ("viewer", "operator", "approver"):
        with pytest.raises(Forbidden) as err:
            registry.push(actor(role), make_archive(name).path)
        assert (err.value.code, err.value.http_status) == ("FORBIDDEN", 403)
    assert registry.list(actor("viewer"), name) == []


def test_bootstrap_admin_gives_admin_tokens_only(registry: Registry) -> None:
    name = unique("root")
    first = registry.bootstrap_admin(name)
    second = registry.bootstrap_admin(name, days=1)  # a lost token: ask for another
    assert first != second
    for token in (first, second):
        assert registry.authenticate(token) == Actor(name, "admin")
    viewer = unique("viewer")
    registry.create_user(Actor(name, "admin"), viewer, "viewer")
    with pytest.raises(BatonError) as err:
        registry.bootstrap_admin(viewer)
    assert (err.value.code, err.value.http_status) == ("NOT_AN_ADMIN", 409)
