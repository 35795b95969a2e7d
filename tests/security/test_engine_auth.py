"""Engine authentication: every route against every kind of credential, on a real
`baton serve` with a token file; the file edited while it runs; bad files refused at start;
the `baton engine-tokens` commands; the loud warning of an open engine beyond loopback.

Registry-issued tokens and the dashboard are in test_engine_registry_auth.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.server.tokens import hash_token
from tests.conftest import BATON, Server, run_baton
from tests.security.engines import (
    MATRIX_TOKENS,
    SecureServer,
    bearer,
    run_quick,
    secure_servers,
    write_token_file,
)
from tests.serving.test_registry_serving import wait_for

V2_BODY = {"inputs": [{"name": "action", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
                      {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
RECORDS = [{"action": "ok", "x": 1.0}]
OPEN = "open"
#: (method, path, body, scope needed, answer with that scope). "any": any valid token
#: (paths no route matches: the router's 404 comes only after authentication).
ROUTES: list[tuple[str, str, Any, str, int]] = [
    ("GET", "/v2/health/live", None, OPEN, 200),
    ("GET", "/v2/health/ready", None, OPEN, 200),
    ("GET", "/ui", None, OPEN, 200),
    ("GET", "/ui/static/main.js", None, OPEN, 200),
    ("GET", "/v2", None, "infer", 200),
    ("GET", "/v2/models/chaos", None, "infer", 200),
    ("GET", "/v2/models/chaos/ready", None, "infer", 200),
    ("GET", "/v2/models/chaos/versions/1.0.0", None, "infer", 200),
    ("POST", "/v2/models/chaos/infer", V2_BODY, "infer", 200),
    ("POST", "/v2/models/chaos/versions/1.0.0/infer", V2_BODY, "infer", 200),
    ("POST", "/v1/models/chaos/predict", RECORDS, "infer", 200),
    ("GET", "/openapi.json", None, "infer", 200),
    ("GET", "/v2/models/no-such-model", None, "infer", 404),
    ("POST", "/v1/models/chaos/feedback", [{"id": "nope", "label": 1.0}], "feedback", 200),
    ("GET", "/v1/models", None, "read", 200),
    ("GET", "/v1/stats", None, "read", 200),
    ("GET", "/metrics", None, "read", 200),
    ("GET", "/ui/api/registry", None, "read", 200),
    ("GET", "/ui/api/registry/whoami", None, "read", 404),  # no registry here: NO_REGISTRY
    ("GET", "/no/such/route", None, "any", 404),
    ("GET", "/v2//health/live", None, "any", 404),  # not the probe: a path it only resembles
]
#: credential -> (Authorization header or None, 401 code when it is refused outright)
REFUSED = {"none": (None, "UNAUTHORIZED"), "garbage": ("Bearer bte_garbage", "INVALID_TOKEN"),
           "not bearer": ("Basic YWRtaW46YWRtaW4=", "UNAUTHORIZED"),
           "empty bearer": ("Bearer", "UNAUTHORIZED"),
           "registry-looking": ("Bearer bt_not-here", "INVALID_TOKEN"),
           "expired": ("expired", "TOKEN_EXPIRED"), "revoked": ("revoked", "TOKEN_REVOKED")}


@pytest.fixture
def secure_serve(baton_env: dict[str, str]) -> Iterator[Callable[..., SecureServer]]:
    yield from secure_servers(baton_env)


@pytest.fixture(scope="module")
def auth_engine(tmp_path_factory: pytest.TempPathFactory, chaos_bundle: Path,
                baton_env: dict[str, str]) -> Iterator[tuple[Server, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("engine-auth")
    tokens = write_token_file(folder / "tokens.toml", MATRIX_TOKENS)
    server = Server([chaos_bundle], baton_env, ["--tokens", str(folder / "tokens.toml")])
    try:
        server.wait_ready()
        yield server, tokens
    finally:
        server.stop()


def call(client: httpx.Client, method: str, path: str, body: Any,
         auth: str | None) -> httpx.Response:
    headers = {"authorization": auth} if auth else {}
    return client.request(method, path, json=body, headers=headers)


def test_every_route_against_every_credential(auth_engine: tuple[Server, dict[str, str]]
                                              ) -> None:
    server, tokens = auth_engine
    failures = []
    for method, path, body, needed, answer in ROUTES:
        for cred, (header, code) in REFUSED.items():
            auth = f"Bearer {tokens[header]}" if header in tokens else header
            resp = call(server.client, method, path, body, auth)
            if needed == OPEN:
                ok = resp.status_code == answer
            else:
                ok = (resp.status_code == 401 and resp.json()["code"] == code
                      and resp.headers["www-authenticate"] == 'Bearer realm="baton"'
                      and isinstance(resp.json()["error"], str))
            if not ok:
                failures.append(f"{method} {path} with {cred}: {resp.status_code} {resp.text}")
        for name in ("infer", "feedback", "read", "admin"):
            resp = call(server.client, method, path, body, f"Bearer {tokens[name]}")
            allowed = needed in (OPEN, "any", name) or name == "admin"
            if allowed:
                ok = resp.status_code == answer
            else:
                ok = (resp.status_code == 403 and resp.json()["code"] == "FORBIDDEN"
                      and resp.json()["details"] == {"scope": needed, "scopes": [name]}
                      and "www-authenticate" not in resp.headers)
            if not ok:
                failures.append(f"{method} {path} with {name}: {resp.status_code} {resp.text}")
    assert not failures, "\n".join(failures)


def test_the_openapi_document_says_a_bearer_token_is_needed(
        auth_engine: tuple[Server, dict[str, str]]) -> None:
    server, tokens = auth_engine
    doc = server.client.get("/openapi.json", headers=bearer(tokens["infer"])).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/v2/health/live"]["get"]["security"] == []


def test_nothing_is_disclosed_before_authentication(auth_engine: tuple[Server, dict[str, str]]
                                                    ) -> None:
    server, tokens = auth_engine
    known = server.client.get("/v2/models/chaos")
    unknown = server.client.get("/v2/models/no-such-model")
    wrong_method = server.client.delete("/v1/stats")
    for resp in (known, unknown, wrong_method):
        assert resp.status_code == 401 and resp.json() == known.json()
    registry = server.client.get("/ui/api/registry")
    assert registry.status_code == 401 and "url" not in registry.json()
    # The predictions the refused calls would have made were never made.
    stats = server.client.get("/v1/stats", headers=bearer(tokens["read"])).json()
    requests_before = stats["models"][0]["metrics"]["requests"]
    for _ in range(3):
        assert server.client.post("/v1/models/chaos/predict", json=RECORDS,
                                  headers=bearer(tokens["read"])).status_code == 403
    stats = server.client.get("/v1/stats", headers=bearer(tokens["read"])).json()
    assert stats["models"][0]["metrics"]["requests"] == requests_before


def test_a_token_file_edited_while_the_engine_runs(serve: Callable[..., Server],
                                                   chaos_bundle: Path, tmp_path: Path,
                                                   baton_env: dict[str, str]) -> None:
    file = tmp_path / "tokens.toml"
    added = run_baton("engine-tokens", "add", file, "--name", "shop", "--scope", "infer",
                      env=baton_env)
    assert added.returncode == 0, added.stderr
    shop = added.stdout.strip()
    server = serve([chaos_bundle], "--tokens", str(file))
    predict = lambda token: server.client.post(  # noqa: E731
        "/v1/models/chaos/predict", json=RECORDS, headers=bearer(token))
    assert predict(shop).status_code == 200

    # A token added while it runs is accepted; one revoked is refused: no restart.
    later = run_baton("engine-tokens", "add", file, "--name", "batch", "--scope", "infer",
                      env=baton_env).stdout.strip()
    wait_for(lambda: predict(later).status_code == 200, timeout=10)
    revoked = run_baton("engine-tokens", "revoke", file, "shop", env=baton_env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    wait_for(lambda: predict(shop).status_code == 401, timeout=10)
    assert predict(shop).json()["code"] == "TOKEN_REVOKED"

    # A file broken while it runs: the last good one stays in force, the error is logged.
    good = file.read_text()
    file.write_text(good.replace('scopes = [', 'scopes = ["everything", '))
    # (the file is looked at, at most once a second, when a request comes)
    wait_for(lambda: predict(later).status_code == 200
             and "field 'scopes' must be a non-empty list" in server.output(), timeout=10)
    assert "the last good token file stays in force" in server.output()
    assert predict(shop).json()["code"] == "TOKEN_REVOKED"
    assert server.proc.poll() is None


@pytest.mark.parametrize(("content", "expected"), [
    ("[[token]]\nname = 'a'\n", "token #1 (line 1), field 'sha256' is missing"),
    ("[[token]]\nname = 'a'\nsha256 = '%s'\nscopes = ['root']\ncreated = 2025-01-01T00:00:00Z\n",
     "token #1 (line 1), field 'scopes' must be a non-empty list of infer, feedback, read, "
     "admin"),
    ("# two\n\n[[token]]\nname = 'a'\nsha256 = '%s'\nscopes = ['read']\n"
     "created = 2025-01-01T00:00:00Z\n[[token]]\nname = 'A'\nsha256 = '%s'\n"
     "scopes = ['read']\ncreated = 2025-01-01T00:00:00Z\n",
     "token #2 (line 8), field 'name' 'A' is used by an earlier token"),
    ("[[token]]\nname = 'a'\nsha256 = '%s'\nscopes = ['read']\ncreated = 'yesterday'\n",
     "field 'created' must be a TOML date-time"),
    ("[[token]]\nname = 'a'\nsha256 = '%s'\nscopes = ['read']\ncreated = 2025-01-01T00:00:00Z\n"
     "password = 'x'\n", "field 'password' is not a token field"),
    ("[[token]\n", "is not valid TOML"),
])
def test_a_malformed_token_file_stops_serve_at_start(chaos_bundle: Path, tmp_path: Path,
                                                     baton_env: dict[str, str], content: str,
                                                     expected: str) -> None:
    file = tmp_path / "tokens.toml"
    digests = tuple(hash_token(str(i)) for i in range(content.count("%s")))
    file.write_text(content % digests)
    r = run_quick([*BATON, "serve", str(chaos_bundle), "--port", "0", "--tokens", str(file)],
                  env=baton_env)
    assert r.returncode == 2, r.stderr
    assert "error [INVALID_TOKENS_FILE]" in r.stderr and expected in r.stderr, r.stderr
    assert "Baton is serving" not in r.stderr


def test_engine_tokens_add_list_revoke(tmp_path: Path, baton_env: dict[str, str]) -> None:
    file = tmp_path / "sub" / "tokens.toml"
    added = run_baton("engine-tokens", "add", file, "--name", "ops", "--scope", "read",
                      "--scope", "feedback", "--days", "7", env=baton_env)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("bte_") and len(token) > 40
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    text = file.read_text()
    assert token not in text and hash_token(token) in text  # only its digest is kept
    assert "shown only now" in added.stderr and token not in added.stderr

    service = run_baton("engine-tokens", "add", file, "--name", "scorer", "--scope", "infer",
                        "--never-expires", env=baton_env)
    assert service.returncode == 0, service.stderr
    listed = run_baton("engine-tokens", "list", file, env=baton_env)
    assert listed.returncode == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in listed.stdout.splitlines() if line.startswith("│")}
    assert rows["ops"][0] == "feedback, read" and rows["ops"][3] == "active"
    assert rows["scorer"][2] == "never" and rows["scorer"][3] == "active"
    assert token not in listed.stdout and hash_token(token) not in listed.stdout

    for args, code in [(("--name", "OPS", "--scope", "read"), "TOKEN_EXISTS"),
                       (("--name", "../x", "--scope", "read"), "INVALID_TOKEN_NAME"),
                       (("--name", "big", "--scope", "read", "--days", "1e9"), "INVALID_DAYS"),
                       (("--name", "neg", "--scope", "read", "--days", "-1"), "INVALID_DAYS")]:
        r = run_baton("engine-tokens", "add", file, *args, env=baton_env)
        assert r.returncode == 2 and f"[{code}]" in r.stderr, (args, r.stderr)
    bad_scope = run_baton("engine-tokens", "add", file, "--name", "x", "--scope", "root",
                          env=baton_env)
    assert bad_scope.returncode == 2 and "'root' is not one of" in bad_scope.stderr

    assert run_baton("engine-tokens", "revoke", file, "ops", env=baton_env).returncode == 0
    again = run_baton("engine-tokens", "revoke", file, "ops", env=baton_env)
    assert again.returncode == 0 and "already revoked" in again.stdout
    missing = run_baton("engine-tokens", "revoke", file, "nobody", env=baton_env)
    assert missing.returncode == 2 and "[TOKEN_NOT_FOUND]" in missing.stderr
    listed = run_baton("engine-tokens", "list", file, env=baton_env).stdout
    assert "revoked" in next(line for line in listed.splitlines() if "ops" in line)
    assert file.read_text().count("[[token]]") == 2  # nothing else was written


def test_an_open_engine_beyond_loopback_warns_loudly(secure_serve: Callable[..., SecureServer],
                                                     chaos_bundle: Path, tmp_path: Path,
                                                     baton_env: dict[str, str]) -> None:
    # A bundle that does not exist: serve binds all interfaces, warns, and stops at once
    # (the port is open only for the moment it takes to find the bundle missing).
    missing = tmp_path / "missing-bundle"
    r = run_quick([*BATON, "serve", str(missing), "--host", "0.0.0.0", "--port", "0"],
                  env=baton_env)
    assert r.returncode != 0 and "BUNDLE_NOT_FOUND" in r.stderr
    assert "!! WARNING: this engine listens on 0.0.0.0:" in r.stderr
    assert "WITHOUT AUTHENTICATION" in r.stderr and "can predict, post feedback" in r.stderr
    assert "WARNING baton.serve: listening on 0.0.0.0:" in r.stderr  # and in the log

    # With tokens, or on loopback, there is nothing to warn about.
    tokens = tmp_path / "tokens.toml"
    write_token_file(tokens, {"a": (("read",), None, False)})
    quiet = run_quick([*BATON, "serve", str(missing), "--host", "0.0.0.0", "--port", "0",
                       "--tokens", str(tokens)], env=baton_env)
    assert "BUNDLE_NOT_FOUND" in quiet.stderr and "WITHOUT AUTHENTICATION" not in quiet.stderr
    local = secure_serve([chaos_bundle])
    out = local.wait_for_output("Try:")
    assert "WITHOUT AUTHENTICATION" not in out and "Authentication" not in out
    assert f"curl {local.url}/v2/models/chaos" in out and "Bearer" not in out


def test_serve_announces_authentication_and_the_curl_sends_a_token(
        secure_serve: Callable[..., SecureServer], chaos_bundle: Path, tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    write_token_file(file, {"a": (("infer",), None, False)})
    server = secure_serve([chaos_bundle], "--tokens", str(file))
    out = server.wait_for_output("Try:")
    assert f"Authentication: tokens from the token file {file}" in out
    assert f'curl -H "authorization: Bearer $BATON_TOKEN" {server.url}/v2/models/chaos' in out
