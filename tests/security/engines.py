"""Engines with authentication and TLS for the security tests: token files written the way
``baton engine-tokens`` writes them, and real ``baton serve`` processes reached over http or
https (with a client that trusts the test's own certificate authority)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from baton.server.tokens import TokenEntry, hash_token, new_token, write_tokens
from tests.conftest import BATON, Server, free_port

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
#: name -> (scopes, expires, revoked): one token per cell of the route x credential matrix.
MATRIX_TOKENS: dict[str, tuple[tuple[str, ...], dt.datetime | None, bool]] = {
    "infer": (("infer",), None, False),
    "feedback": (("feedback",), NOW + dt.timedelta(days=1), False),
    "read": (("read",), None, False),
    "admin": (("admin",), None, False),
    "expired": (("admin",), NOW - dt.timedelta(seconds=1), False),
    "revoked": (("admin",), None, True),
}


def write_token_file(path: Path, specs: dict[str, tuple[tuple[str, ...], dt.datetime | None,
                                                        bool]]) -> dict[str, str]:
    """A token file with one token per spec; returns name -> token."""
    tokens = {name: new_token() for name in specs}
    write_tokens(path, [TokenEntry(name, hash_token(tokens[name]), frozenset(scopes), NOW,
                                   expires, revoked)
                        for name, (scopes, expires, revoked) in specs.items()])
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class SecureServer(Server):
    """A `baton serve` whose client speaks https (``verify``: an ssl context) when asked."""

    def __init__(self, bundles: list[Path], env: dict[str, str], args: list[str], *,
                 https: bool = False, verify: Any = True) -> None:
        super().__init__(bundles, env, args)
        if https:
            self.client.close()
            self.url = f"https://127.0.0.1:{self.port}"
            try:
                self.client = httpx.Client(base_url=self.url, timeout=30, verify=verify)
            except Exception:
                self.client = httpx.Client()
                self.stop()  # never leave the process behind
                raise

    def wait_for_output(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in (out := self.output()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never shown:\n{out}")
            time.sleep(0.05)
        return out


def secure_servers(baton_env: dict[str, str]) -> Iterator[Callable[..., SecureServer]]:
    """For a fixture: a factory like ``serve``, with ``https=`` and ``verify=`` (an ssl
    context) for the client; every server it started is stopped at the end."""
    servers: list[SecureServer] = []

    def start(bundles: list[Path], *args: str, ready: bool = True,
              env: dict[str, str] | None = None, **client: Any) -> SecureServer:
        server = SecureServer(bundles, {**baton_env, **(env or {})}, list(args), **client)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for s in servers:
        s.stop()


def trusting(ca_pem: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` and shows ``cert`` (certificate, key)."""
    context = ssl.create_default_context(cafile=str(ca_pem))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def run_quick(cmd: list[str], env: dict[str, str], timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class RegistryProcess:
    """A real ``baton registry serve`` (SQLite under ``home``) that a test can stop and
    start again on the same port; ``admin`` is a client with the bootstrap admin's token."""

    def __init__(self, home: Path, baton_env: dict[str, str]) -> None:
        from baton.registry.client import RegistryClient

        self.env = dict(baton_env, BATON_HOME=str(home))
        boot = run_quick([*BATON, "registry", "bootstrap-admin", "root"], self.env)
        assert boot.returncode == 0, boot.stderr
        key = run_quick([*BATON, "registry", "key"], self.env)
        assert key.returncode == 0, key.stderr
        self.key = key.stdout.splitlines()[0].strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: set[str] = set()
        self.admin = RegistryClient(self.url, boot.stdout.strip(), timeout=30)

    def start(self) -> RegistryProcess:
        self.proc = subprocess.Popen(
            [*BATON, "registry", "serve", "--port", str(self.port)], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin.whoami()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def user(self, name: str, role: str, **token: Any) -> tuple[str, int]:
        """A user with ``role`` (created once) and a new token of theirs: (token, id)."""
        if name not in self.users:
            self.admin.create_user(name, role)
            self.users.add(name)
        issued = self.admin.issue_token(name, days=1, **token)
        return issued["token"], issued["id"]

    def close(self) -> None:
        self.stop()
        self.admin.close()


def follower_args(registry: RegistryProcess) -> list[str]:
    """``baton serve`` options of an engine following ``registry`` (its key pinned)."""
    return ["--registry", registry.url, "--registry-key", registry.key, "--poll", "0.2"]
