"""Registry-issued tokens on an engine that follows a real registry: scopes by role and
narrowed, revocation within the cache time, a registry that is down (503, never let
through), and the cache itself (shared lookups, bounded, refusals kept apart)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from baton.server.registry_tokens import RegistryTokens
from baton.server.tokens import hash_token
from tests.conftest import Server
from tests.security.engines import RegistryProcess, bearer, follower_args, write_token_file
from tests.serving.test_registry_serving import wait_for

#: (method, path, scope it needs, answer with it). The registry serves nothing in
#: production here, so model routes answer 404 once a caller is let through.
ROUTES = [("GET", "/v2", "infer", 200),
          ("POST", "/v1/models/scorer/predict", "infer", 404),
          ("POST", "/v1/models/scorer/feedback", "feedback", 404),
          ("GET", "/v1/stats", "read", 200),
          ("GET", "/ui/api/registry", "read", 200)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory,
             baton_env: dict[str, str]) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("engine-registry") / "home", baton_env)
    try:
        yield reg.start()
    finally:
        reg.close()


@pytest.fixture
def follow(serve: Callable[..., Server], registry: RegistryProcess
           ) -> Callable[..., Server]:
    """An engine following ``registry``, reading it with a viewer's token of its own."""
    engine_token, _ = registry.user("engine-reader", "viewer")

    def start(**env: str) -> Server:
        return serve([], *follower_args(registry),
                     env={"BATON_TOKEN": engine_token, **env})

    return start


def test_registry_tokens_carry_their_roles_scopes(follow: Callable[..., Server],
                                                  registry: RegistryProcess) -> None:
    engine = follow()
    holders = {
        "client": (registry.user("shop", "client")[0], {"infer", "feedback"}),
        "viewer": (registry.user("vic", "viewer")[0], {"read"}),
        "data-scientist": (registry.user("dana", "data-scientist")[0],
                           {"infer", "feedback", "read"}),
        "narrowed": (registry.user("dana", "data-scientist", scopes=["read"])[0], {"read"}),
        "admin": (registry.user("ada", "admin")[0], {"infer", "feedback", "read", "admin"}),
    }
    failures = []
    for method, path, needed, answer in ROUTES:
        for who, (token, scopes) in holders.items():
            resp = engine.client.request(method, path, json=[], headers=bearer(token))
            if needed in scopes or "admin" in scopes:
                ok = resp.status_code == answer
            else:
                ok = (resp.status_code == 403 and resp.json()["code"] == "FORBIDDEN"
                      and resp.json()["details"] == {"scope": needed,
                                                     "scopes": sorted(scopes)})
            if not ok:
                failures.append(f"{method} {path} as {who}: {resp.status_code} {resp.text}")
        for header, code in ((None, "UNAUTHORIZED"), ("Bearer bt_forged", "INVALID_TOKEN")):
            resp = engine.client.request(method, path, json=[],
                                         headers={"authorization": header} if header else {})
            if resp.status_code != 401 or resp.json()["code"] != code:
                failures.append(f"{method} {path} with {header}: {resp.status_code} {resp.text}")
    assert not failures, "\n".join(failures)
    # Only an authenticated caller with 'read' learns which registry the engine follows.
    info = engine.client.get("/ui/api/registry", headers=bearer(holders["viewer"][0]))
    assert info.json()["url"] == registry.url
    assert registry.url not in engine.client.get("/ui/api/registry").text
    # An open path that only leads elsewhere by its dots is not a way around the guard.
    for path in ("/ui/static/%2e%2e/api/registry", "/ui/static/%2e%2e%2fapi%2fregistry",
                 "/v2/health/live/%2e%2e/%2e%2e/%2e%2e/ui/api/registry"):
        resp = engine.client.get(path)
        assert resp.status_code in (401, 404) and registry.url not in resp.text, path


def test_a_revoked_registry_token_is_refused_within_the_cache_time(
        follow: Callable[..., Server], registry: RegistryProcess) -> None:
    engine = follow(BATON_AUTH_CACHE_SECONDS="1")
    token, token_id = registry.user("rita", "viewer")
    assert engine.client.get("/v1/stats", headers=bearer(token)).status_code == 200
    registry.admin.revoke_token(token_id)
    wait_for(lambda: engine.client.get("/v1/stats", headers=bearer(token)).status_code == 401,
             timeout=15)
    refused = engine.client.get("/v1/stats", headers=bearer(token))
    assert refused.json()["code"] == "TOKEN_REVOKED"
    assert refused.headers["www-authenticate"] == 'Bearer realm="baton"'


def test_a_registry_that_is_down_lets_nothing_unverified_through(
        follow: Callable[..., Server], registry: RegistryProcess) -> None:
    engine = follow()  # the default cache: 30 s
    seen, _ = registry.user("sam", "viewer")
    unseen, _ = registry.user("ursula", "viewer")
    assert engine.client.get("/v1/stats", headers=bearer(seen)).status_code == 200
    registry.stop()
    try:
        down = engine.client.get("/v1/stats", headers=bearer(unseen))
        assert down.status_code == 503 and down.json()["code"] == "AUTH_UNAVAILABLE"
        assert registry.url in down.json()["error"]
        assert engine.client.get("/v1/stats", headers=bearer(seen)).status_code == 200
        assert engine.client.get("/v1/stats").status_code == 401
        assert engine.client.get("/v2/health/live").status_code == 200
    finally:
        registry.start()
    assert engine.client.get("/v1/stats", headers=bearer(unseen)).status_code == 200


def _identify(tokens: RegistryTokens, *tokens_: str) -> list[object]:
    """identify() for each token at once, in one event loop: principals or errors."""

    async def go() -> list[object]:
        try:
            return await asyncio.gather(*(tokens.identify(t.encode(), hash_token(t))
                                          for t in tokens_), return_exceptions=True)
        finally:
            await tokens.close()

    # In a thread of its own: Playwright's sync API may keep a loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(60)


def test_the_cache_shares_lookups_and_stays_bounded(registry: RegistryProcess) -> None:
    token, _ = registry.user("carl", "data-scientist")
    cache = RegistryTokens(registry.url, {}, 30.0, max_valid=3, max_refused=5)
    [carl, *same] = _identify(cache, *[token] * 20)
    assert cache.lookups == 1  # twenty concurrent requests, one question to the registry
    assert all(p is carl for p in same)
    assert (carl.name, sorted(carl.scopes)) == ("carl", ["feedback", "infer", "read"])

    garbage = [f"bt_garbage-{i}" for i in range(40)]
    refused = _identify(cache, *garbage, *garbage)
    assert all(getattr(e, "code", None) == "INVALID_TOKEN" for e in refused)
    assert cache.lookups == 1 + 40  # each garbage token asked once, then remembered
    assert cache.sizes() == (1, 5)  # refusals never evict a valid token
    assert _identify(cache, token)[0].name == "carl" and cache.lookups == 41

    others = [registry.user(f"v{i}", "viewer")[0] for i in range(4)]
    _identify(cache, *others)
    assert cache.sizes()[0] == 3  # least recently used first out


def test_a_verified_token_is_not_trusted_past_the_cache_time(
        registry: RegistryProcess) -> None:
    token, _ = registry.user("tess", "viewer")
    never = RegistryTokens(registry.url, {}, 0.0)
    _identify(never, token, token)
    _identify(never, token)
    assert never.lookups == 2  # cache 0: asked again for every new request



def test_a_token_file_beside_a_registry(follow: Callable[..., Server],
                                        registry: RegistryProcess, tmp_path: Path) -> None:
    """Both sources at once: the file first (what it says about its tokens is final),
    then the registry."""
    file_tokens = write_token_file(tmp_path / "tokens.toml",
                                   {"ops": (("read",), None, False),
                                    "gone": (("read",), None, True)})
    engine = follow(BATON_TOKENS_FILE=str(tmp_path / "tokens.toml"))
    registry_token, _ = registry.user("vera", "viewer")
    for token in (file_tokens["ops"], registry_token):
        assert engine.client.get("/v1/stats", headers=bearer(token)).status_code == 200
    gone = engine.client.get("/v1/stats", headers=bearer(file_tokens["gone"]))
    assert gone.status_code == 401 and gone.json()["code"] == "TOKEN_REVOKED"
    out = engine.output()
    assert f"token file {tmp_path / 'tokens.toml'} and registry {registry.url}" in out
