"""The registry over TLS, for real: `baton registry serve --tls-cert/--tls-key
[--tls-client-ca]` with a certificate authority made in the test (trustme), and the `baton`
command trusting it through BATON_REGISTRY_CA (and showing a client certificate through
BATON_REGISTRY_CLIENT_CERT/_KEY) on every registry command. Before issue 9 the registry spoke
plain HTTP only.

TLS is the same whatever the registry's database, so these run on SQLite only (the token
rules they exercise run on both back ends in tests/registry/test_tokens.py)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import trustme

from tests.conftest import BATON, free_port, run_baton
from tests.registry.test_cli import stop

ERROR, USAGE, FORBIDDEN = 1, 2, 6


@dataclass
class Pki:
    """A certificate authority, the registry's certificate, and a client certificate."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def context(self, client: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("engine@baton.test")
    paths = Pki(*(folder / n for n in ("ca.pem", "cert.pem", "key.pem", "client.pem",
                                        "client.key")))
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.cert))
    server.private_key_pem.write_to_path(str(paths.key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Registry:
    url: str
    admin_token: str
    announce: str


def _serve(env: dict[str, str], folder: Path, tls: list[str],
           ready: ssl.SSLContext) -> Iterator[Registry]:
    database_url = f"sqlite:///{folder / 'registry.db'}"
    key = ["--key-file", str(folder / "signing.key")]
    storage = ["--storage", str(folder / "storage")]
    r = run_baton("registry", "bootstrap-admin", "root", "--db", database_url, *storage, *key,
                  env=env)
    assert r.returncode == 0, r.stderr
    port = free_port()
    with open(folder / "registry.log", "w+") as log:
        proc = subprocess.Popen(
            [*BATON, "registry", "serve", "--db", database_url, *storage, *key, "--port",
             str(port), *tls], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"https://127.0.0.1:{port}"
            _wait_ready(url, proc, log, ready)
            log.seek(0)
            yield Registry(url, r.stdout.strip(), log.read())
        finally:
            stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: IO[str],
                context: ssl.SSLContext) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"baton registry serve exited:\n{log.read()}")
        try:
            if httpx.get(url + "/api/v1/health", verify=context, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    log.seek(0)
    raise AssertionError(f"the TLS registry is not ready after 60 s:\n{log.read()}")


@pytest.fixture
def env(baton_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in baton_env.items() if not k.startswith(("BATON_REGISTRY",
                                                                     "BATON_TOKEN"))}
    return dict(clean, XDG_CONFIG_HOME=str(tmp_path / "config"))


@pytest.fixture
def tls_registry(env: dict[str, str], pki: Pki, tmp_path: Path) -> Iterator[Registry]:
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    yield from _serve(env, tmp_path / "tls", tls, pki.context())


@pytest.fixture
def mtls_registry(env: dict[str, str], pki: Pki, tmp_path: Path) -> Iterator[Registry]:
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca",
           str(pki.ca)]
    yield from _serve(env, tmp_path / "mtls", tls, pki.context(client=True))


Baton = Callable[..., subprocess.CompletedProcess[str]]


def baton(env: dict[str, str]) -> Baton:
    def run(*args: str, code: int = 0, **extra: str) -> subprocess.CompletedProcess[str]:
        r = run_baton(*args, env=dict(env, **extra), timeout=120)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        return r
    return run


def test_the_registry_serves_https_and_the_cli_trusts_the_ca_it_is_given(
        tls_registry: Registry, env: dict[str, str], pki: Pki) -> None:
    assert f"Baton registry at {tls_registry.url} " in tls_registry.announce
    run, url, admin = baton(env), tls_registry.url, tls_registry.admin_token
    with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
        httpx.get(url.replace("https", "http") + "/api/v1/health", timeout=5)

    r = run("login", url, "--token", admin, code=ERROR)
    assert "REGISTRY_TLS_ERROR" in r.stderr and "BATON_REGISTRY_CA" in r.stderr
    r = run("list", "--registry", url, code=ERROR, BATON_TOKEN=admin)
    assert "REGISTRY_TLS_ERROR" in r.stderr

    trusted = {"BATON_REGISTRY_CA": str(pki.ca)}
    r = run("login", url, "--token", admin, **trusted)
    assert r.stdout.startswith(f"logged in to {url} as root (admin)")
    assert run("list", **trusted).stdout == "(no bundles)\n"
    user = "tls-viewer"
    run("users", "create", user, "--role", "viewer", **trusted)
    token = run("tokens", "create", user, "--days", "1", **trusted).stdout.strip()
    assert run("tokens", "list", "--user", user, **trusted).stdout.count(user) == 1
    r = run("list", code=ERROR, BATON_TOKEN=token)  # the saved login, without the CA
    assert "REGISTRY_TLS_ERROR" in r.stderr


def test_client_certificates_are_required_when_a_client_ca_is_given(
        mtls_registry: Registry, env: dict[str, str], pki: Pki, tmp_path: Path) -> None:
    assert "client certificates required" in mtls_registry.announce
    run, url, admin = baton(env), mtls_registry.url, mtls_registry.admin_token
    trusted = {"BATON_REGISTRY_CA": str(pki.ca), "BATON_TOKEN": admin}

    r = run("list", "--registry", url, code=ERROR, **trusted)
    assert "REGISTRY_TLS_ERROR" in r.stderr and "BATON_REGISTRY_CLIENT_CERT" in r.stderr
    stranger = make_pki(tmp_path / "stranger")  # a client certificate from another CA
    r = run("list", "--registry", url, code=ERROR, **trusted,
            BATON_REGISTRY_CLIENT_CERT=str(stranger.client_cert),
            BATON_REGISTRY_CLIENT_KEY=str(stranger.client_key))
    assert "REGISTRY_TLS_ERROR" in r.stderr

    shown = {"BATON_REGISTRY_CLIENT_CERT": str(pki.client_cert),
             "BATON_REGISTRY_CLIENT_KEY": str(pki.client_key)}
    assert run("list", "--registry", url, **trusted, **shown).stdout == "(no bundles)\n"
    r = run("login", url, "--token", admin, **trusted, **shown)
    assert "pin it on engines with --registry-key" in r.stdout


def test_tls_settings_that_cannot_work_are_refused_at_start(
        env: dict[str, str], pki: Pki, tmp_path: Path) -> None:
    run = baton(env)
    base = ["registry", "serve", "--db", f"sqlite:///{tmp_path / 'registry.db'}", "--key-file",
            str(tmp_path / "signing.key"), "--port", str(free_port())]
    r = run(*base, "--tls-cert", str(pki.cert), code=USAGE)
    assert "INVALID_SETTING" in r.stderr and "tls_key" in r.stderr
    r = run(*base, "--tls-cert", str(pki.ca), "--tls-key", str(pki.key), code=USAGE)
    assert "INVALID_SETTING" in r.stderr and "tls_cert" in r.stderr  # key does not match
    r = run(*base, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca",
            str(tmp_path / "missing.pem"), code=USAGE)
    assert "INVALID_SETTING" in r.stderr and "tls_client_ca" in r.stderr
