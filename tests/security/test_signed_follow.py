"""A registry-following engine follows signed decisions, not the registry's database.

Real engines with real workers follow :class:`SignedSource` (the registry protocol, signing
with a key made in the test) step by step (``RegistryFollower.sync``): database edits,
forged, copied and replayed decisions are refused, shown and counted while the last verified
version keeps answering; the registry's own signed decisions are followed; canary and shadow
candidates that stop qualifying leave traffic at the next step.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.monitor.metrics import EngineMetrics
from baton.registry.client import RegistryClient
from baton.serving.follow import RegistryFollower, prepare_from_registry
from baton.serving.gate import CANDIDATE, LIVE, ServeGate
from baton.serving.service import Engine
from baton.settings import Settings
from baton.trust import Decision, SigningKey, sign_decision
from tests.conftest import Server
from tests.security.signed_source import SignedSource, new_key
from tests.serving.test_registry_serving import (
    Registry,
    running_registry,
    scorer,
    serve_registry,
    version_of,
    wait_for,
)

pytestmark = pytest.mark.slow

Scenario = Callable[[Engine, RegistryFollower, SignedSource], Awaitable[None]]


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return new_key(tmp_path)


@pytest.fixture
def settings(baton_home: Path) -> Settings:
    # The session's home: environments are built once for every test.
    return Settings(home=baton_home, drain_timeout=5.0, prediction_log_sample=0.0)


@pytest.fixture
def source(key: SigningKey, tmp_path: Path) -> SignedSource:
    """scorer 1.0.0 (answers 2x) released to production; 2.0.0 (3x) and 3.0.0 (5x) pushed."""
    src = SignedSource(key)
    for version, factor in (("1.0.0", 2.0), ("2.0.0", 3.0), ("3.0.0", 5.0)):
        src.push("scorer", version, scorer(tmp_path, version, factor))
    src.release("scorer@1.0.0")
    return src


def follow(settings: Settings, source: SignedSource, key: SigningKey, scenario: Scenario, *,
           stage: str = "production", follow: bool = True) -> None:
    async def run() -> None:
        engine = Engine([], settings, EngineMetrics())
        engine.source = RegistryFollower(engine, source, settings, ServeGate(key, stage),
                                         interval=0.1, follow=follow)
        assert engine.metrics is not None
        engine.metrics.watch(engine.observer)
        try:
            await scenario(engine, engine.source, source)
        finally:
            await engine.close()

    asyncio.run(run())


async def answer(engine: Engine) -> str:
    """The version that answers an unversioned request."""
    body = await engine.get("scorer").predict_records(json.dumps([{"x": 1.0}]).encode())
    return str(json.loads(body)["predictions"][0]["v"])


def refused(follower: RegistryFollower) -> set[tuple[str, str, str]]:
    return {(e["ref"], e["role"], e["code"]) for e in follower.describe()["refused"]}


def counted(engine: Engine, code: str) -> float:
    assert engine.metrics is not None
    line = f'baton_registry_refusals_total{{code="{code}",model="scorer"}} '
    for row in engine.metrics.render().decode().splitlines():
        if row.startswith(line):
            return float(row[len(line):])
    return 0.0


def forged(key: SigningKey, row: dict[str, Any], **state: Any) -> dict[str, str]:
    """A decision for ``row`` in the registry's format, signed by ``key``."""
    decision = Decision(name=row["name"], version=row["version"], digest=row["digest"],
                        **{"stage": "production", "approvals": ("abe",), "seq": 10**6,
                           **state})
    return sign_decision(key, decision)


def test_database_edits_are_refused_and_the_verified_version_keeps_answering(
        settings: Settings, source: SignedSource, key: SigningKey, tmp_path: Path) -> None:
    source.act("scorer@2.0.0", "validate", stage="validated")
    source.act("scorer@2.0.0", "promote", stage="staging")  # never approved

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert await answer(engine) == "1.0.0"
        v1 = engine.models["scorer"]
        # An attacker with database rights: 2.0.0 into production, 1.0.0 out, no signature.
        src.edit("scorer@2.0.0", stage="production")
        src.edit("scorer@1.0.0", stage="archived")
        await follower.sync()
        assert await answer(engine) == "1.0.0" and engine.models["scorer"] is v1
        assert refused(follower) == {("scorer@2.0.0", LIVE, "STAGE_NOT_ALLOWED"),
                                     ("scorer@1.0.0", LIVE, "DECISION_MISMATCH")}
        # Then a decision for 2.0.0 signed with the attacker's own key, 1.0.0's decision
        # copied onto 2.0.0, and no decision at all.
        attacker = new_key(tmp_path, "attacker.key")
        v2 = src.show("scorer@2.0.0")
        for decision, code in ((forged(attacker, v2), "BAD_SIGNATURE"),
                               (src.show("scorer@1.0.0")["decision"], "DECISION_MISMATCH"),
                               (None, "UNSIGNED")):
            src.edit("scorer@2.0.0", decision=decision)
            await follower.sync()
            assert await answer(engine) == "1.0.0" and engine.models["scorer"] is v1
            assert ("scorer@2.0.0", LIVE, code) in refused(follower)
        # Each refusal is counted once, when it appears, not at every step.
        await follower.sync()
        assert [counted(engine, c) for c in ("STAGE_NOT_ALLOWED", "DECISION_MISMATCH",
                                             "BAD_SIGNATURE", "UNSIGNED")] == [1, 2, 1, 1]
        # The registry's own decisions are followed: approved, promoted, signed.
        src.edit("scorer@2.0.0", stage="staging", decision=src.signed["scorer@2.0.0"][-1])
        src.edit("scorer@1.0.0", stage="production")
        src.act("scorer@2.0.0", "approve", approve="abe")
        src.act("scorer@2.0.0", "promote", stage="production")
        await follower.sync()
        assert await answer(engine) == "2.0.0"
        assert refused(follower) == set()  # a live row's refusal lasts while it holds

    follow(settings, source, key.public, scenario)


def test_a_replayed_decision_is_refused_and_a_real_rollback_followed(
        settings: Settings, source: SignedSource, key: SigningKey) -> None:
    v1_in_production = source.signed["scorer@1.0.0"][-1]
    source.release("scorer@2.0.0")  # 1.0.0 archived by a signed decision

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert await answer(engine) == "2.0.0"
        # 1.0.0's genuine, older production decision put back with its stage.
        src.edit("scorer@1.0.0", stage="production", decision=v1_in_production)
        src.edit("scorer@2.0.0", stage="archived")
        await follower.sync()
        assert await answer(engine) == "2.0.0"
        assert refused(follower) == {("scorer@1.0.0", LIVE, "DECISION_REPLAYED"),
                                     ("scorer@2.0.0", LIVE, "DECISION_MISMATCH")}
        assert counted(engine, "DECISION_REPLAYED") == 1
        # The registry rolls back for real: a new signed decision.
        src.edit("scorer@1.0.0", stage="archived", decision=src.signed["scorer@1.0.0"][-1])
        src.edit("scorer@2.0.0", stage="production")
        src.act("scorer@1.0.0", "rollback", stage="production")
        await follower.sync()
        assert await answer(engine) == "1.0.0" and refused(follower) == set()

    follow(settings, source, key.public, scenario)


def test_another_key_pinned_nothing_served(settings: Settings, source: SignedSource,
                                           tmp_path: Path) -> None:
    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert engine.models == {}
        assert refused(follower) == {("scorer@1.0.0", LIVE, "BAD_SIGNATURE")}
        [entry] = follower.describe()["refused"]
        assert "not signed by the pinned registry key" in entry["reason"]

    follow(settings, source, new_key(tmp_path, "other.key").public, scenario)


def test_candidates_that_stop_qualifying_leave_traffic_at_the_next_step(
        settings: Settings, source: SignedSource, key: SigningKey) -> None:
    for version in ("2.0.0", "3.0.0"):
        source.act(f"scorer@{version}", "validate", stage="validated")
        source.act(f"scorer@{version}", "promote", stage="staging")
        source.act(f"scorer@{version}", "approve", approve="abe")

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        canary = prepare_from_registry(src, "scorer@2.0.0", settings, follower.gate, CANDIDATE)
        shadow = prepare_from_registry(src, "scorer@3.0.0", settings, follower.gate, CANDIDATE)
        engine.add_canary(canary, 1.0)
        engine.add_shadow(shadow)
        await asyncio.gather(canary.pool.start(), shadow.pool.start())
        await follower.sync()
        live = engine.models["scorer"]
        assert await answer(engine) == "2.0.0" and live.shadow is engine.versions.shadows["scorer"]
        await follower.sync()  # still qualifying: nothing changes
        assert await answer(engine) == "2.0.0" and refused(follower) == set()
        # 2.0.0 rejected by the registry (signed); 3.0.0's decision removed from the database.
        src.act("scorer@2.0.0", "reject", reject="rita")
        src.edit("scorer@3.0.0", decision=None)
        await follower.sync()
        assert engine.versions.canaries == {} and engine.versions.shadows == {} \
            and live.shadow is None
        assert await answer(engine) == "1.0.0"
        assert canary.pool.closing and shadow.pool.closing
        assert refused(follower) == {("scorer@2.0.0", "canary", "NOT_APPROVED"),
                                     ("scorer@3.0.0", "shadow", "UNSIGNED")}
        await follower.sync()  # withdrawn for good, and still shown
        assert len(refused(follower)) == 2 and counted(engine, "NOT_APPROVED") == 1

    follow(settings, source, key.public, scenario)


def test_a_signed_departure_is_followed(settings: Settings, source: SignedSource,
                                        key: SigningKey) -> None:
    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert await answer(engine) == "1.0.0"
        src.act("scorer@1.0.0", "archive", stage="archived")
        await follower.sync()
        assert engine.models == {} and refused(follower) == set()

    follow(settings, source, key.public, scenario)


def test_registry_refs_given_are_kept_checked(settings: Settings, source: SignedSource,
                                              key: SigningKey) -> None:
    """``baton serve NAME@VERSION --registry``: the version given, while it qualifies."""
    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        svc = prepare_from_registry(src, "scorer@1.0.0", settings, follower.gate, LIVE)
        await svc.pool.start()
        await engine.replace(svc)
        src.edit("scorer@1.0.0", stage="archived")  # the database only: not a decision
        await follower.sync()
        assert await answer(engine) == "1.0.0" and refused(follower) == set()
        src.edit("scorer@1.0.0", stage="production", decision=forged(key, src.show(
            "scorer@1.0.0"), seq=1))
        await follower.sync()
        assert refused(follower) == {("scorer@1.0.0", LIVE, "DECISION_REPLAYED")}
        src.edit("scorer@1.0.0", decision=src.signed["scorer@1.0.0"][-1])
        src.act("scorer@1.0.0", "reject", reject="rita")
        await follower.sync()
        assert engine.models == {}

    follow(settings, source, key.public, scenario, follow=False)


def test_a_staging_engine_serves_unapproved_staging_but_nothing_rejected(
        settings: Settings, source: SignedSource, key: SigningKey) -> None:
    for version in ("2.0.0", "3.0.0"):
        source.act(f"scorer@{version}", "validate", stage="validated")
        source.act(f"scorer@{version}", "promote", stage="staging")
    source.act("scorer@3.0.0", "reject", reject="rita")

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert await answer(engine) == "2.0.0"
        assert refused(follower) == {("scorer@3.0.0", LIVE, "NOT_APPROVED")}

    follow(settings, source, key.public, scenario, stage="staging")



def test_a_signed_version_past_the_archive_limits_is_not_served(
        settings: Settings, source: SignedSource, key: SigningKey, tmp_path: Path) -> None:
    """The engine's archive limits apply to what it pulls, signed or not."""
    tight = Settings(home=tmp_path / "home", archive_max_files=2)

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        assert engine.models == {}
        [(digest, reason)] = follower.describe()["failed"].items()
        assert digest == src.show("scorer@1.0.0")["digest"]
        assert reason.startswith("ARCHIVE_TOO_LARGE: ")

    follow(tight, source, key.public, scenario)



def test_refusals_are_shown_a_whole_step_at_a_time(settings: Settings, source: SignedSource,
                                                    key: SigningKey) -> None:
    """A reader of /v1/models in the middle of a step sees the last step's refusals."""
    source.edit("scorer@2.0.0", stage="production")  # a draft, moved by the database only

    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        expected = {("scorer@2.0.0", LIVE, "STAGE_NOT_ALLOWED")}
        assert refused(follower) == expected
        asked, release = threading.Event(), threading.Event()
        rows = src.list

        def slow_list(name: str | None = None, stage: str | None = None) -> Any:
            asked.set()
            assert release.wait(30)
            return rows(name, stage)

        src.list = slow_list  # type: ignore[method-assign]
        step = asyncio.get_running_loop().create_task(follower.sync())
        assert await asyncio.to_thread(asked.wait, 30)
        assert refused(follower) == expected  # the step under way has refused nothing yet
        release.set()
        await step
        assert refused(follower) == expected and counted(engine, "STAGE_NOT_ALLOWED") == 1

    follow(settings, source, key.public, scenario)



def test_a_decision_revoked_while_its_version_loads_is_not_swapped_in(
        settings: Settings, source: SignedSource, key: SigningKey) -> None:
    async def scenario(engine: Engine, follower: RegistryFollower, src: SignedSource) -> None:
        await follower.sync()
        v1 = engine.models["scorer"]
        src.release("scorer@2.0.0")
        pull = src.pull

        def pull_then_reject(ref: str, dest: Path, **options: Any) -> tuple[Path, str]:
            got = pull(ref, dest, **options)  # 2.0.0 is being prepared: an approver rejects it
            src.act("scorer@2.0.0", "reject", reject="rita")
            return got

        src.pull = pull_then_reject  # type: ignore[method-assign]
        await follower.sync()
        assert engine.models["scorer"] is v1 and await answer(engine) == "1.0.0"
        assert ("scorer@2.0.0", LIVE, "NOT_APPROVED") in refused(follower)

    follow(settings, source, key.public, scenario)


# -- a real registry, and an attacker with rights on its database --------------------------

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


class Attacker:
    """Database rights on the registry, but not its signing key."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        self.db = sqlalchemy.create_engine(url)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.db.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def drop_triggers(self) -> None:
        """What stops a stage edit without its audit event: gone, as a DBA can."""
        if self.db.dialect.name == "postgresql":
            rows = self.sql("SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c "
                            "ON c.oid = t.tgrelid WHERE NOT t.tgisinternal")
            for trigger, table in rows:
                self.sql(f'DROP TRIGGER "{trigger}" ON "{table}"')
        else:
            for (trigger,) in self.sql("SELECT name FROM sqlite_master WHERE type='trigger'"):
                self.sql(f'DROP TRIGGER "{trigger}"')

    def set_stage(self, version: str, stage: str) -> None:
        self.sql("UPDATE bundle_versions SET stage = :stage WHERE name = 'scorer' AND "
                 "version = :version", stage=stage, version=version)

    def plant(self, version: str, signed: dict[str, str]) -> None:
        """Make ``signed`` the version's latest decision (a new row in ``decisions``)."""
        self.sql("INSERT INTO decisions (bundle_id, seq, payload, signature, key_id, created_at) "
                 "SELECT id, (SELECT MAX(seq) + 1000 FROM decisions), :payload, :signature, "
                 ":key, CURRENT_TIMESTAMP FROM bundle_versions WHERE name = 'scorer' AND "
                 "version = :version", version=version, **signed)

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def attacked(request: pytest.FixtureRequest, tmp_path: Path,
             baton_env: dict[str, str]) -> Iterator[tuple[Registry, Attacker]]:
    """A real registry on SQLite or PostgreSQL, and an attacker on its database."""
    home = tmp_path / "registry-home"
    if request.param == "sqlite":
        with running_registry(home, baton_env) as reg:
            attacker = Attacker(f"sqlite:///{home / 'registry' / 'registry.db'}")
            yield reg, attacker
            attacker.close()
        return
    name = f"baton_gate_{secrets.token_hex(6)}"
    admin = pg_admin()
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        with running_registry(home, baton_env, url) as reg:
            attacker = Attacker(url)
            yield reg, attacker
            attacker.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not answering on 127.0.0.1:5432 ({exc}): start it with "
                    "scripts/ensure-services.sh (make test does)", pytrace=False)


def source_of(server: Server) -> dict[str, Any]:
    return server.client.get("/v1/models").json()["source"]  # type: ignore[no-any-return]


def refusals_of(server: Server) -> set[tuple[str, str, str]]:
    return {(e["ref"], e["role"], e["code"]) for e in source_of(server)["refused"]}


def only(server: Server, version: str, requests: int = 20) -> bool:
    return all(version_of(server) == version for _ in range(requests))


def test_a_database_edit_is_not_followed(attacked: tuple[Registry, Attacker],
                                         baton_env: dict[str, str], tmp_path: Path) -> None:
    reg, attacker = attacked
    reg.release(scorer(tmp_path, "1.0.0", 2.0), "1.0.0")
    reg.client("dana").push(scorer(tmp_path, "2.0.0", 3.0))
    reg.client("dana").promote("scorer@2.0.0", "validated")
    reg.client("olga").promote("scorer@2.0.0", "staging")  # never approved
    server = serve_registry(reg, baton_env)
    try:
        server.wait_ready()
        wait_for(lambda: version_of(server) == "1.0.0")
        attacker.drop_triggers()
        attacker.set_stage("2.0.0", "production")
        attacker.set_stage("1.0.0", "archived")
        wait_for(lambda: refusals_of(server) == {("scorer@2.0.0", "live", "STAGE_NOT_ALLOWED"),
                                                 ("scorer@1.0.0", "live", "DECISION_MISMATCH")})
        assert only(server, "1.0.0")
        # A decision for 2.0.0 signed with the attacker's own key, then 1.0.0's genuine one.
        v2 = reg.admin.show("scorer@2.0.0")
        attacker.plant("2.0.0", forged(new_key(tmp_path, "attacker.key"), v2))
        wait_for(lambda: ("scorer@2.0.0", "live", "BAD_SIGNATURE") in refusals_of(server))
        assert only(server, "1.0.0")
        attacker.plant("2.0.0", reg.admin.show("scorer@1.0.0")["decision"])
        wait_for(lambda: ("scorer@2.0.0", "live", "DECISION_MISMATCH") in refusals_of(server))
        assert only(server, "1.0.0")
        metrics = server.client.get("/metrics").text
        for code, n in (("STAGE_NOT_ALLOWED", 1), ("BAD_SIGNATURE", 1),
                        ("DECISION_MISMATCH", 2)):
            assert f'baton_registry_refusals_total{{code="{code}",model="scorer"}} {n}.0' \
                in metrics, code
        assert "[BAD_SIGNATURE]" in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("attacked", ["sqlite"], indirect=True)
def test_a_running_engine_refuses_a_replayed_decision(
        attacked: tuple[Registry, Attacker], baton_env: dict[str, str], tmp_path: Path) -> None:
    reg, attacker = attacked
    reg.release(scorer(tmp_path, "1.0.0", 2.0), "1.0.0")
    v1_in_production = reg.admin.show("scorer@1.0.0")["decision"]
    server = serve_registry(reg, baton_env)
    try:
        server.wait_ready()
        wait_for(lambda: version_of(server) == "1.0.0")
        reg.release(scorer(tmp_path, "2.0.0", 3.0), "2.0.0")  # 1.0.0 archived, signed
        wait_for(lambda: version_of(server) == "2.0.0")
        attacker.drop_triggers()
        attacker.set_stage("1.0.0", "production")
        attacker.plant("1.0.0", v1_in_production)  # genuine, but older than 2.0.0's
        attacker.set_stage("2.0.0", "archived")
        wait_for(lambda: refusals_of(server) == {("scorer@1.0.0", "live", "DECISION_REPLAYED"),
                                                 ("scorer@2.0.0", "live", "DECISION_MISMATCH")})
        assert only(server, "2.0.0")
    finally:
        server.stop()


@pytest.mark.parametrize("attacked", ["sqlite"], indirect=True)
def test_a_canary_rejected_after_start_leaves_traffic(
        attacked: tuple[Registry, Attacker], baton_env: dict[str, str], tmp_path: Path) -> None:
    reg, _ = attacked
    reg.release(scorer(tmp_path, "1.0.0", 2.0), "1.0.0")
    reg.client("dana").push(scorer(tmp_path, "2.0.0", 3.0))
    reg.client("dana").promote("scorer@2.0.0", "validated")
    reg.client("olga").promote("scorer@2.0.0", "staging")
    reg.client("abe").decide("scorer@2.0.0", "approve", "looks fine")
    reg.admin.create_user("rita", "approver")
    rita = RegistryClient(reg.url, reg.admin.create_token("rita", 1))
    server = serve_registry(reg, baton_env, "--canary", "scorer@2.0.0=100")
    try:
        server.wait_ready()
        wait_for(lambda: version_of(server) == "2.0.0")
        rita.decide("scorer@2.0.0", "reject", "fails on FR payments")
        wait_for(lambda: version_of(server) == "1.0.0")
        assert only(server, "1.0.0")
        assert refusals_of(server) == {("scorer@2.0.0", "canary", "NOT_APPROVED")}
        [entry] = source_of(server)["refused"]
        assert "was rejected by rita" in entry["reason"] and "canary withdrawn" in entry["reason"]
        assert "traffic" not in server.client.get("/v1/models").json()["models"][0]
    finally:
        rita.close()
        server.stop()
