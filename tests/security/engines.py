"""Engines with authentication and TLS for the security tests: token files written the way
``baton engine-tokens`` writes them, and real ``baton serve`` processes reached over http or
https (with a client that trusts the test's own certificate authority)."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from baton.server.tokens import TokenEntry, hash_token, new_token, write_tokens
from tests.conftest import Server

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
