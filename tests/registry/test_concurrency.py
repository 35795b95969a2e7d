"""Concurrent promotions of one model serialise: one version ends in production and the
audit log replays to the final state and its hash chain verifies (on SQLite and
PostgreSQL, one engine per thread, as separate server processes would have)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from baton.errors import BatonError
from baton.registry.audit import verify_database
from baton.registry.service import Registry

from .conftest import MakeArchive, MakeRegistry, actor, approve, to_staging, unique


class HoldInside:
    """Keeps each promotion to production inside its transaction (after the model lock)
    until a second promotion arrives there too, or 0.5 s pass. With the lock working the
    second one never arrives while the first is inside; without it both would, and both
    would see no version in production: the race happens every time instead of rarely."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.cond = threading.Condition()

    def install(self, reg: Registry) -> None:
        original = reg._require_approvals  # a seam inside the locked transaction

        def held(bv: Any) -> None:
            with self.cond:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.inside >= 2, timeout=0.5)
            try:
                original(bv)
            finally:
                with self.cond:
                    self.inside -= 1

        reg._require_approvals = held  # type: ignore[method-assign]


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start every call at once in its own thread; each result is a value or a BatonError."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except BatonError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def replay(events: list[dict[str, Any]]) -> dict[str, str]:
    """Apply the audit log's stage changes in order, checking each starts where the last
    left the version and that no two versions are ever in production together."""
    stages: dict[str, str] = {}
    for e in events:
        assert stages.get(e["version"]) == e["from"], (e, stages)
        stages[e["version"]] = e["to"]
        assert list(stages.values()).count("production") <= 1, (e, stages)
    return stages


def staged_model(make_registry: MakeRegistry, make_archive: MakeArchive,
                 versions: list[str]) -> tuple[str, Registry]:
    reg, name = make_registry(), unique("race")
    for version in versions:
        reg.push(actor("data-scientist"), make_archive(name, version).path)
        to_staging(reg, f"{name}@{version}")
        approve(reg, f"{name}@{version}")
    return name, reg


def assert_consistent(reg: Registry, name: str) -> dict[str, str]:
    final = {b["version"]: b["stage"] for b in reg.list(actor("viewer"), name)}
    assert list(final.values()).count("production") == 1, final
    assert replay(reg.history(actor("viewer"), name)) == final
    # Concurrent appends never fork the audit chain nor leave a gap in it.
    with reg.db.session() as s:
        verify_database(s, reg.signing_key.public, reg.head_file)
    return final


def test_two_versions_promoted_at_once_leave_one_in_production(
        make_registry: MakeRegistry, make_archive: MakeArchive) -> None:
    name, setup = staged_model(make_registry, make_archive, ["1", "2"])
    hold = HoldInside()
    workers = [make_registry() for _ in range(2)]
    for reg in workers:
        hold.install(reg)
    results = run_together([
        lambda: workers[0].promote(actor("operator"), f"{name}@1", "production"),
        lambda: workers[1].promote(actor("operator"), f"{name}@2", "production")])

    assert hold.most_inside == 1
    assert [r["stage"] for r in results] == ["production", "production"]  # one after the other
    final = assert_consistent(setup, name)
    assert sorted(final.values()) == ["archived", "production"]
    promotions = [e for e in setup.history(actor("viewer"), name) if e["to"] == "production"]
    assert [e["version"] for e in promotions][-1] == next(
        v for v, stage in final.items() if stage == "production")


def test_one_version_promoted_twice_at_once_is_promoted_once(
        make_registry: MakeRegistry, make_archive: MakeArchive) -> None:
    name, setup = staged_model(make_registry, make_archive, ["1"])
    hold = HoldInside()
    workers = [make_registry() for _ in range(2)]
    for reg in workers:
        hold.install(reg)
    results = run_together([
        lambda reg=reg: reg.promote(actor("operator"), f"{name}@1", "production")  # type: ignore[misc]
        for reg in workers])

    assert hold.most_inside == 1
    refused = [r for r in results if isinstance(r, BatonError)]
    assert len(refused) == 1 and refused[0].code == "INVALID_TRANSITION"
    assert refused[0].details == {"from": "production", "to": "production"}
    assert assert_consistent(setup, name) == {"1": "production"}
    promotions = [e for e in setup.history(actor("viewer"), name) if e["to"] == "production"]
    assert len(promotions) == 1


def test_many_promotions_racing_freely_stay_consistent(
        make_registry: MakeRegistry, make_archive: MakeArchive) -> None:
    versions = ["1", "2", "3"]
    name, setup = staged_model(make_registry, make_archive, versions)
    workers = [make_registry() for _ in range(2 * len(versions))]
    results = run_together([
        lambda reg=reg, v=v: reg.promote(actor("operator"), f"{name}@{v}",  # type: ignore[misc]
                                         "production")
        for reg, v in zip(workers, versions * 2, strict=True)])

    # An archived version may go back to production (a rollback); only the version that is
    # in production at that moment is refused.
    refused = [r for r in results if isinstance(r, BatonError)]
    assert all(r.details == {"from": "production", "to": "production"} for r in refused)
    assert_consistent(setup, name)
    promotions = [e for e in setup.history(actor("viewer"), name) if e["to"] == "production"]
    assert len(promotions) == len(results) - len(refused)
