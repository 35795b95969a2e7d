"""Issue 9, lifecycle without short cuts, on SQLite and PostgreSQL.

Before: ``validated -> archived -> production`` was accepted as a "rollback", so staging
(and what it stands for) could be skipped. Now production is reached only from staging, or
by a rollback to a version that was in production before (``was_production``, set when a
version enters production and never cleared; the database refuses any other change of it).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from baton.errors import BatonError
from baton.registry.service import Registry
from baton.trust import verify_decision
from tests.registry.conftest import (  # noqa: F401  (fixtures used by name)
    ApiServer,
    MakeArchive,
    actor,
    approve,
    assert_error,
    database_url,
    make_archive,
    make_registry,
    open_database,
    registry,
    serve_api,
    to_staging,
    unique,
)


def refusal(reg: Registry, ref: str, to: str) -> BatonError:
    with pytest.raises(BatonError) as err:
        reg.promote(actor("operator"), ref, to)
    return err.value


@pytest.mark.parametrize("via", ["validated", "staging"])
def test_archiving_is_no_short_cut_to_production(
        registry: Registry, make_archive: MakeArchive, via: str) -> None:  # noqa: F811
    name, op = unique("shortcut"), actor("operator")
    ref = f"{name}@0.1.0"
    registry.push(actor("data-scientist"), make_archive(name).path)
    registry.validate(op, ref)
    approve(registry, ref)  # approved, so only the lifecycle can refuse it
    if via == "staging":
        registry.promote(op, ref, "staging")
    registry.promote(op, ref, "archived", "parked")
    events = registry.count_events()

    err = refusal(registry, ref, "production")
    assert (err.code, err.http_status, err.exit_code) == ("INVALID_TRANSITION", 409, 7)
    assert err.details == {"from": "archived", "to": "production"}
    assert err.message == (
        f"{ref} is archived and was never in production: production is reached only from "
        "staging, or by a rollback to a version that was in production before")
    assert registry.show(actor("viewer"), ref)["stage"] == "archived"
    assert registry.count_events() == events


def test_the_api_refuses_the_short_cut_with_a_json_error(
        registry: Registry, make_archive: MakeArchive, serve_api: Any) -> None:  # noqa: F811
    name, op = unique("api-shortcut"), actor("operator")
    ref = f"{name}@0.1.0"
    registry.push(actor("data-scientist"), make_archive(name).path)
    registry.validate(op, ref)
    registry.promote(op, ref, "archived")
    server: ApiServer = serve_api(registry)
    admin: httpx.Client = server.client(registry.bootstrap_admin(unique("root")))
    resp = admin.post(f"/bundles/{name}/0.1.0/promote", json={"to": "production"})
    body = assert_error(resp, 409, "INVALID_TRANSITION")
    assert "was never in production" in body["error"]


def test_a_real_rollback_is_allowed_recorded_and_signed(
        registry: Registry, make_archive: MakeArchive) -> None:  # noqa: F811
    name, op = unique("rollback"), actor("operator")
    v1, v2 = f"{name}@1", f"{name}@2"
    for version, ref in (("1", v1), ("2", v2)):
        registry.push(actor("data-scientist"), make_archive(name, version).path)
        to_staging(registry, ref, op)
        approve(registry, ref)
    registry.promote(op, v1, "production")
    registry.promote(op, v2, "production")  # archives v1
    assert registry.show(actor("viewer"), v1)["stage"] == "archived"

    assert registry.promote(op, v1, "production", "v2 misbehaves")["stage"] == "production"
    last = registry.history(actor("viewer"), name)[-2:]
    assert [(e["action"], e["version"], e["from"], e["to"]) for e in last] == [
        ("archive", "2", "production", "archived"), ("rollback", "1", "archived", "production")]
    for ref, stage, action in ((v1, "production", "rollback"), (v2, "archived", "archive")):
        signed = verify_decision(registry.signing_key.public,
                                 registry.show(actor("viewer"), ref)["decision"])
        assert (signed.stage, signed.action) == (stage, action)
    # v2 was in production too: going back to it is a rollback as well.
    assert registry.promote(op, v2, "production")["stage"] == "production"
