"""The serve-time gate: with a registry, an engine serves only what the registry signed into a
stage its policy allows, with enough approvals and no rejection; nothing local.

The first part checks the gate's policy and its refusals on decisions signed with a key made
in the test; the second reproduces the bypasses of issue 9 against a real registry and
``baton serve`` (each of them served the version before the gate existed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.deployment import (
    CanarySpec,
    DeploymentSpec,
    EngineSpec,
    RegistrySpec,
    ShadowSpec,
    load_deployments,
)
from baton.errors import BatonError, SettingsError
from baton.profile import save_login
from baton.serving.assembly import build_engine
from baton.serving.gate import CANDIDATE, LIVE, ServeGate
from baton.settings import Settings
from baton.trust import Decision, SigningKey, sign_decision
from tests.conftest import Server, free_port, run_baton
from tests.security.signed_source import new_key
from tests.serving.test_registry_serving import (
    Registry,
    caller,
    engine_env,
    running_registry,
    scorer,
    version_of,
    wait_for,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return new_key(tmp_path)


def signed(key: SigningKey, *, stage: str, approvals: tuple[str, ...] = (),
           rejections: tuple[str, ...] = (), seq: int = 1, version: str = "1.0.0",
           digest: str = D1, required: int = 1) -> dict[str, Any]:
    """A registry list/show entry whose decision ``key`` signed."""
    decision = Decision(name="scorer", version=version, digest=digest, stage=stage,
                        approvals=approvals, rejections=rejections,
                        approvals_required=required, seq=seq, action="promote")
    return {"name": "scorer", "version": version, "digest": digest, "stage": stage,
            "decision": sign_decision(key, decision)}


def refusal(gate: ServeGate, info: dict[str, Any], role: str = LIVE) -> str:
    with pytest.raises(BatonError) as caught:
        gate.verify(info, role)
    assert caught.value.exit_code == 6 and caught.value.http_status == 403
    assert caught.value.details.get("ref", "").startswith("scorer@"), caught.value.details
    return caught.value.code


POLICY = [
    # engine stage, role, signed stage, approvals, rejections -> refusal code (None: served)
    ("production", LIVE, "production", ("abe",), (), None),
    ("production", LIVE, "production", (), (), "NOT_APPROVED"),
    ("production", LIVE, "production", ("abe",), ("rita",), "NOT_APPROVED"),
    ("production", LIVE, "staging", ("abe",), (), "STAGE_NOT_ALLOWED"),
    ("production", LIVE, "archived", ("abe",), (), "STAGE_NOT_ALLOWED"),
    ("production", CANDIDATE, "staging", ("abe",), (), None),
    ("production", CANDIDATE, "production", ("abe",), (), None),
    ("production", CANDIDATE, "staging", (), (), "NOT_APPROVED"),
    ("production", CANDIDATE, "staging", ("abe",), ("rita",), "NOT_APPROVED"),
    ("production", CANDIDATE, "validated", ("abe",), (), "STAGE_NOT_ALLOWED"),
    ("production", CANDIDATE, "archived", ("abe",), (), "STAGE_NOT_ALLOWED"),
    ("staging", LIVE, "staging", (), (), None),
    ("staging", LIVE, "staging", (), ("rita",), "NOT_APPROVED"),
    ("staging", LIVE, "production", ("abe",), (), "STAGE_NOT_ALLOWED"),
    ("staging", LIVE, "draft", (), (), "STAGE_NOT_ALLOWED"),
    ("staging", CANDIDATE, "staging", (), (), None),
    ("staging", CANDIDATE, "production", (), (), None),
    ("staging", CANDIDATE, "production", ("abe",), ("rita",), "NOT_APPROVED"),
    ("staging", CANDIDATE, "validated", (), (), "STAGE_NOT_ALLOWED"),
]


@pytest.mark.parametrize(("engine", "role", "stage", "approvals", "rejections", "code"),
                         POLICY)
def test_stage_and_approval_policy(key: SigningKey, engine: str, role: str, stage: str,
                                   approvals: tuple[str, ...], rejections: tuple[str, ...],
                                   code: str | None) -> None:
    gate = ServeGate(key.public, engine)
    info = signed(key, stage=stage, approvals=approvals, rejections=rejections)
    if code is None:
        assert gate.verify(info, role).digest == D1
    else:
        assert refusal(gate, info, role) == code


def test_the_registry_rule_sets_how_many_approvals(key: SigningKey) -> None:
    gate = ServeGate(key.public, "production")
    one_of_two = signed(key, stage="production", approvals=("abe",), required=2)
    assert refusal(gate, one_of_two) == "NOT_APPROVED"
    with pytest.raises(BatonError, match="has 1 of the 2 approvals"):
        gate.verify(one_of_two, LIVE)
    gate.verify(signed(key, stage="production", approvals=("abe", "ann"), required=2), LIVE)


def test_what_the_database_says_is_never_believed(key: SigningKey, tmp_path: Path) -> None:
    gate = ServeGate(key.public, "production")
    good = signed(key, stage="production", approvals=("abe",))
    assert refusal(gate, {**good, "decision": None}) == "UNSIGNED"
    assert refusal(gate, {k: v for k, v in good.items() if k != "decision"}) == "UNSIGNED"
    # Signed by another key (another registry, or one the attacker made).
    forged = signed(new_key(tmp_path, "other.key"), stage="production", approvals=("abe",))
    assert refusal(gate, forged) == "BAD_SIGNATURE"
    # The payload edited under a genuine signature: a staging decision made production.
    staging = signed(key, stage="staging", approvals=("abe",))
    altered = dict(staging["decision"], payload=good["decision"]["payload"])
    assert refusal(gate, {**staging, "decision": altered}) == "BAD_SIGNATURE"
    # Another version's genuine decision copied onto this row, or this row's digest changed.
    other = signed(key, stage="staging", version="2.0.0", digest=D2)
    assert refusal(gate, {**other, "decision": good["decision"]}) == "DECISION_MISMATCH"
    assert refusal(gate, {**good, "digest": D2}) == "DECISION_MISMATCH"
    gate.verify(good, LIVE)  # and the genuine row itself is fine


def test_older_decisions_are_replays(key: SigningKey) -> None:
    gate = ServeGate(key.public, "production")
    v1_old = signed(key, stage="production", approvals=("abe",), seq=5)
    v2 = signed(key, stage="production", approvals=("abe",), seq=9, version="2.0.0", digest=D2)
    gate.accept(gate.verify(v2, LIVE), LIVE)
    # v1 was genuinely in production once (#5), before v2 (#9): not any more.
    assert refusal(gate, v1_old) == "DECISION_REPLAYED"
    # Per version too: v2's rejection (#12) seen, its earlier approval (#9) is a replay.
    v2_rejected = signed(key, stage="production", approvals=("abe",), rejections=("rita",),
                         seq=12, version="2.0.0", digest=D2)
    assert refusal(gate, v2_rejected) == "NOT_APPROVED"
    gate.accept(gate.signed(v2_rejected), LIVE)
    assert refusal(gate, v2, CANDIDATE) == "DECISION_REPLAYED"
    rollback = signed(key, stage="production", approvals=("abe",), seq=14)
    assert gate.verify(rollback, LIVE).seq == 14  # a real rollback is a new decision


def test_a_staging_engine_keeps_older_staging_versions(key: SigningKey) -> None:
    """Staging holds several versions of a model at once: a newer decision on one says
    nothing about another."""
    gate = ServeGate(key.public, "staging")
    v2 = signed(key, stage="staging", seq=9, version="2.0.0", digest=D2)
    gate.accept(gate.verify(v2, LIVE), LIVE)
    assert gate.verify(signed(key, stage="staging", seq=5), LIVE).seq == 5


def test_an_engine_serves_only_the_lifecycle_stages(key: SigningKey) -> None:
    for stage in ("archived", "validated", "draft", "", "Production"):
        with pytest.raises(SettingsError) as caught:
            ServeGate(key.public, stage)
        assert caught.value.code == "INVALID_SETTING"
        assert caught.value.details["field"] == "stage"


# -- engine assembly: refused before anything is pulled or started --------------------------

@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """No saved login: the tests say what is pinned."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("BATON_REGISTRY", "BATON_TOKEN", "BATON_REGISTRY_KEY"):
        monkeypatch.delenv(var, raising=False)
    return Settings(home=tmp_path / "home")


# Nothing listens on port 9: each refusal below comes before the registry is asked anything.
NOWHERE = "http://127.0.0.1:9"
FROM_NOWHERE = RegistrySpec(NOWHERE)


def build_error(spec: EngineSpec, settings: Settings) -> BatonError:
    with pytest.raises(BatonError) as caught:
        build_engine(spec, settings)
    return caught.value


def test_an_engine_spec_with_another_stage_is_refused(settings: Settings,
                                                      chaos_bundle: Path) -> None:
    for registry in (None, NOWHERE):
        err = build_error(EngineSpec((DeploymentSpec(str(chaos_bundle)),),
                                     RegistrySpec(registry, stage="archived")), settings)
        assert (err.code, err.exit_code, err.details["field"]) == ("INVALID_SETTING", 2,
                                                                   "stage")


def test_no_pinned_key_no_registry_serving(settings: Settings, key: SigningKey) -> None:
    err = build_error(EngineSpec(registry=FROM_NOWHERE), settings)
    assert (err.code, err.exit_code) == ("REGISTRY_KEY_REQUIRED", 6)
    assert "baton registry key" in err.message and "--registry-key" in err.message
    # The key 'baton login' saved for this registry is pinned; it is a valid key.
    save_login(NOWHERE, "token", "ed25519:bm90IGEga2V5")
    assert build_error(EngineSpec(registry=FROM_NOWHERE),
                       settings).code == "INVALID_REGISTRY_KEY"
    save_login(NOWHERE, "token", key.public.text)
    err = build_error(EngineSpec(registry=FROM_NOWHERE,
                                 canary=CanarySpec("scorer@1.0.0", 0.1)), settings)
    assert err.code == "REGISTRY_UNREACHABLE"  # pinned: it went on to ask the registry


def test_a_registry_engine_serves_nothing_local(settings: Settings, key: SigningKey,
                                                chaos_bundle: Path, tmp_path: Path) -> None:
    from baton.bundle.archive import build_archive

    archive = build_archive(chaos_bundle, tmp_path / "archives").path
    pinned = Settings(home=settings.home, registry_key=key.public.text)
    deployment = tmp_path / "deploy.toml"
    deployment.write_text(f'[[deployments]]\nbundle = "{archive}"\n')
    for spec in (EngineSpec(registry=FROM_NOWHERE, canary=CanarySpec(str(archive), 1.0)),
                 EngineSpec(registry=FROM_NOWHERE, canary=CanarySpec(str(chaos_bundle), 1.0)),
                 EngineSpec(registry=FROM_NOWHERE, shadow=ShadowSpec(str(archive))),
                 EngineSpec(registry=FROM_NOWHERE, shadow=ShadowSpec(str(chaos_bundle))),
                 EngineSpec((DeploymentSpec(str(archive)),), FROM_NOWHERE),
                 EngineSpec((DeploymentSpec(str(chaos_bundle)),), FROM_NOWHERE),
                 EngineSpec(tuple(load_deployments(deployment)), FROM_NOWHERE)):
        err = build_error(spec, pinned)
        assert (err.code, err.exit_code) == ("STAGE_NOT_ALLOWED", 6), spec
        assert "serves only versions the registry signed" in err.message


# -- the bypasses of issue 9, against a real registry and `baton serve` ----------------------

@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory,
           baton_env: dict[str, str]) -> Iterator[Registry]:
    """A real registry: scorer 1.0.0 released to production; 2.0.0 validated and staged,
    not approved (one test rejects it: every other one holds for both)."""
    root = tmp_path_factory.mktemp("gate")
    with running_registry(root / "registry-home", baton_env) as reg:
        reg.release(scorer(root, "1.0.0", 2.0), "1.0.0")
        reg.client("dana").push(scorer(root, "2.0.0", 3.0))
        reg.client("dana").promote("scorer@2.0.0", "validated")
        reg.client("olga").promote("scorer@2.0.0", "staging")
        yield reg


def serve_refused(reg: Registry, env: dict[str, str], *args: str | Path) -> str:
    """``baton serve --registry`` that must stop before serving (exit 6); its stderr."""
    r = run_baton("serve", "--registry", reg.url, "--port", str(free_port()), *args, env=env,
                  timeout=120)
    assert r.returncode == 6, r.stderr
    return r.stderr


@pytest.mark.slow
def test_an_unapproved_or_rejected_version_gets_no_production_traffic(
        staged: Registry, baton_env: dict[str, str]) -> None:
    env = engine_env(baton_env, staged)
    for option in (("--canary", "scorer@2.0.0=100"), ("--shadow", "scorer@2.0.0")):
        err = serve_refused(staged, env, "--stage", "production", *option)
        assert "error [NOT_APPROVED]: scorer@2.0.0 (sha256:" in err
        assert "has 0 of the 1 approvals the registry requires" in err
    staged.client("abe").decide("scorer@2.0.0", "reject", "fails on FR payments")
    for option in (("--canary", "scorer@2.0.0=100"), ("--shadow", "scorer@2.0.0")):
        err = serve_refused(staged, env, "--stage", "production", *option)
        assert "error [NOT_APPROVED]" in err and "was rejected by abe" in err


@pytest.mark.slow
def test_a_local_archive_is_never_served_by_a_registry_engine(
        staged: Registry, baton_env: dict[str, str], tmp_path: Path) -> None:
    archive = scorer(tmp_path, "9.0.0", 9.0)  # never pushed
    for args in (("--canary", f"{archive}=100"), ("--shadow", archive), (archive,),
                 (tmp_path / "scorer-9.0.0",)):
        err = serve_refused(staged, engine_env(baton_env, staged), *args)
        assert "error [STAGE_NOT_ALLOWED]" in err
        assert "a registry-following engine serves only versions the registry signed" in err


@pytest.mark.slow
def test_only_staging_or_production_and_never_without_a_pinned_key(
        staged: Registry, baton_env: dict[str, str], tmp_path: Path) -> None:
    env = engine_env(baton_env, staged)
    for stage in ("archived", "validated"):
        r = run_baton("serve", "--registry", staged.url, "--stage", stage, env=env)
        assert r.returncode == 2 and "Invalid value for '--stage'" in r.stderr
    unpinned = {k: v for k, v in env.items() if k != "BATON_REGISTRY_KEY"}
    unpinned["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    err = serve_refused(staged, unpinned)
    assert "error [REGISTRY_KEY_REQUIRED]" in err and "baton registry key" in err
    # 'baton login' checks the key against the registry and saves it: then it is pinned.
    login = run_baton("login", staged.url, "--token", staged.tokens["eve"], "--registry-key",
                      staged.key, env=unpinned)
    assert login.returncode == 0, login.stderr
    err = serve_refused(staged, unpinned, "--canary", "scorer@2.0.0=100")
    assert "error [NOT_APPROVED]" in err  # past the key: the policy refuses the version


@pytest.mark.slow
def test_another_pinned_key_serves_nothing(staged: Registry, baton_env: dict[str, str],
                                           tmp_path: Path) -> None:
    other = new_key(tmp_path, "other.key").public.text
    server = Server([], dict(engine_env(baton_env, staged), BATON_REGISTRY_KEY=other),
                    ["--registry", staged.url, "--poll", "0.2"])
    server.client.headers.update(caller(staged))
    try:
        server.wait_ready()
        source = server.client.get("/v1/models").json()["source"]
        assert [(e["ref"], e["code"]) for e in source["refused"]] == [
            ("scorer@1.0.0", "BAD_SIGNATURE")]
        assert server.client.get("/v1/models").json()["models"] == []
        resp = server.client.post("/v1/models/scorer/predict", json=[{"x": 1.0}])
        assert resp.status_code == 404 and resp.json()["code"] == "MODEL_NOT_FOUND"
        metrics = server.client.get("/metrics").text
        assert 'baton_registry_refusals_total{code="BAD_SIGNATURE",model="scorer"} 1.0' \
            in metrics
        assert "ERROR baton.follow: refused scorer@1.0.0 (live) [BAD_SIGNATURE]" \
            in server.output()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_signed_production_ref_is_served_and_kept_checked(
        staged: Registry, baton_env: dict[str, str]) -> None:
    """The control: what the policy allows is served, pinned, without following."""
    server = Server([], engine_env(baton_env, staged),
                    ["scorer@1.0.0", "--registry", staged.url, "--poll", "0.2"])
    server.client.headers.update(caller(staged))
    try:
        server.wait_ready()
        assert version_of(server) == "1.0.0"
        body = server.client.get("/v1/models").json()
        assert body["source"]["follow"] is False and body["source"]["refused"] == []
        assert body["source"]["key"] == staged.key
        wait_for(lambda: server.client.get("/v1/models").json()["source"]["syncs"] >= 2)
        assert version_of(server) == "1.0.0"
    finally:
        server.stop()


@pytest.mark.slow
def test_batch_scoring_takes_only_a_signed_unrejected_version(
        staged: Registry, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``registry_version`` (``baton score --registry``): staging or production, signed,
    never rejected; the same key pinning as an engine."""
    from baton.serving.opening import registry_version

    monkeypatch.setenv("BATON_TOKEN", staged.tokens["eve"])
    with pytest.raises(BatonError) as caught:
        registry_version(staged.url, "scorer@1.0.0", settings)
    assert caught.value.code == "REGISTRY_KEY_REQUIRED"
    pinned = Settings(home=settings.home, registry_key=staged.key)
    svc = registry_version(staged.url, "scorer@1.0.0", pinned)
    assert (svc.version, svc.ready) == ("1.0.0", False)  # built, not started
    if not staged.admin.show("scorer@2.0.0")["approvals"]:  # not rejected by a test before
        staged.client("abe").decide("scorer@2.0.0", "reject", "fails on FR payments")
    with pytest.raises(BatonError) as caught:
        registry_version(staged.url, "scorer@2.0.0", pinned)
    assert caught.value.code == "NOT_APPROVED" and "rejected by abe" in caught.value.message
