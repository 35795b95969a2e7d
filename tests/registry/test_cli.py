"""The registry through the `baton` command end to end: a real `baton registry serve`
process, real `baton check` on validation, and the exit codes users script against."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from baton.bundle.archive import bundle_digest, verify_archive
from baton.bundle.scaffold import scaffold
from tests.conftest import BATON, free_port, run_baton

from .conftest import unique

FORBIDDEN, NOT_FOUND, CONFLICT = 6, 2, 7


def expect(r: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert r.returncode == code, (r.args[1:], r.stdout, r.stderr)
    return r


@dataclass
class RegistryProcess:
    url: str
    admin_token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def registry_process(database_url: str, baton_env: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """`baton registry bootstrap-admin`, then `baton registry serve` on this module's
    database, stopped by its PID at the end."""
    env = {k: v for k, v in baton_env.items() if not k.startswith(("BATON_REGISTRY",
                                                                   "BATON_TOKEN"))}
    folder = tmp_path_factory.mktemp("registry-process")
    storage, port = folder / "storage", free_port()
    # A key per database: the session's Baton home is shared by every module and back end,
    # and a signed audit head checkpoint belongs to one database's chain.
    key = ("--key-file", str(folder / "signing.key"))
    r = expect(run_baton("registry", "bootstrap-admin", "root", "--db", database_url,
                         "--storage", storage, *key, env=env), 0)
    with open(folder / "registry.log", "w+") as log:
        proc = subprocess.Popen(
            [*BATON, "registry", "serve", "--db", database_url, "--storage", str(storage),
             "--port", str(port), "--approvals", "1", *key],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, log)
            yield RegistryProcess(url, r.stdout.strip(), env)
        finally:
            stop(proc)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: IO[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"baton registry serve exited:\n{log.read()}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    log.seek(0)
    raise AssertionError(f"baton registry serve not ready after 60 s:\n{log.read()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server by its PID (its process group holds any `baton check` child)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Cli:
    """`baton` with its configuration (XDG_CONFIG_HOME) in this test's own folder."""

    def __init__(self, server: RegistryProcess, config_home: Path) -> None:
        self.env = dict(server.env, XDG_CONFIG_HOME=str(config_home))
        self.config = config_home / "baton" / "config.toml"

    def __call__(self, *args: str | Path, token: str | None = None,
                 code: int = 0) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **({"BATON_TOKEN": token} if token else {}))
        return expect(run_baton(*args, env=env, timeout=120), code)


@pytest.fixture
def cli(registry_process: RegistryProcess, tmp_path: Path) -> Cli:
    return Cli(registry_process, tmp_path / "config")


def test_from_push_to_production_through_the_cli(registry_process: RegistryProcess, cli: Cli,
                                                tmp_path: Path) -> None:
    url, admin = registry_process.url, registry_process.admin_token
    assert admin.startswith("bt_")
    r = cli("login", url, "--token", admin)
    assert r.stdout.splitlines()[0] == f"logged in to {url} as root (admin); saved to {cli.config}"
    assert "pin it on engines with --registry-key" in r.stdout  # test_tokens.py: the key
    assert cli.config.stat().st_mode & 0o777 == 0o600

    # Users and tokens, as the admin that `baton login` saved.
    alice, bob, olga = unique("alice"), unique("bob"), unique("olga")
    tokens = {}
    for user, role in ((alice, "data-scientist"), (bob, "approver"), (olga, "operator")):
        assert cli("users", "create", user, "--role", role).stdout == f"created {user} ({role})\n"
        tokens[user] = cli("users", "token", user, "--days", "1").stdout.strip()
        assert tokens[user].startswith("bt_") and tokens[user] != admin

    # Push: a draft; the same content again changes nothing; other roles may not push.
    name = unique("credit")
    bundle = scaffold(tmp_path / "bundle", name)
    digest, ref = bundle_digest(bundle), f"{name}@0.1.0"
    r = cli("push", bundle, token=tokens[alice])
    assert r.stdout == f"{ref} pushed: {digest} [draft]\n"
    r = cli("push", bundle, token=tokens[alice])
    assert r.stdout == f"{ref} already present (same digest): {digest} [draft]\n"
    assert "FORBIDDEN" in cli("push", bundle, token=tokens[bob], code=FORBIDDEN).stderr

    # draft -> validated (the registry runs `baton check`) -> staging -> production.
    r = cli("promote", ref, "--to", "staging", token=tokens[olga], code=CONFLICT)
    assert "INVALID_TRANSITION" in r.stderr and "would skip validated" in r.stderr
    r = cli("promote", ref, "--to", "validated", token=tokens[olga])
    assert r.stdout.startswith(ref) and " validated " in r.stdout
    assert " staging " in cli("promote", ref, "--to", "staging", token=tokens[olga]).stdout
    r = cli("promote", ref, "--to", "production", token=tokens[olga], code=CONFLICT)
    assert "NOT_ENOUGH_APPROVALS" in r.stderr
    r = cli("approve", ref, "--reason", "mine is fine", token=tokens[alice], code=FORBIDDEN)
    assert "FORBIDDEN" in r.stderr
    r = cli("approve", ref, "--reason", "metrics reviewed", token=tokens[bob])
    assert r.stdout == f"approved {ref} (1 approvals)\n"
    r = cli("promote", ref, "--to", "production", "--reason", "go live", token=tokens[olga])
    assert " production " in r.stdout

    # Reading, as the author: list, show, history, pull, audit.
    me = tokens[alice]
    r = cli("list", "--name", name, token=me)
    assert r.stdout.startswith(ref) and " production " in r.stdout
    assert r.stdout.rstrip().endswith(f"by {alice}") and digest[:19] in r.stdout
    r = cli("show", ref, token=me)
    assert "check: passed" in r.stdout
    assert f"approved by {bob} at " in r.stdout and r.stdout.rstrip().endswith(
        "metrics reviewed")
    r = cli("show", f"{name}@9.9.9", token=me, code=NOT_FOUND)
    assert "BUNDLE_NOT_FOUND" in r.stderr

    lines = cli("history", name, token=me).stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        [alice, "push"], [olga, "validate"], [olga, "promote"], [bob, "approve"],
        [olga, "promote"]]
    assert lines[-1].rstrip().endswith("staging -> production go live")

    r = cli("pull", ref, "-o", tmp_path / "pulled", token=me)
    path, pulled = r.stdout.split()
    assert pulled == digest and verify_archive(Path(path), digest) == digest
    r = cli("pull", f"{name}@sha256:{'0' * 64}", "-o", tmp_path / "wrong", token=me,
            code=NOT_FOUND)
    assert "BUNDLE_NOT_FOUND" in r.stderr and not (tmp_path / "wrong").exists()

    exported = [json.loads(line) for line in cli("audit", token=me).stdout.splitlines()]
    ours = [(e["action"], e["actor"], e["from"], e["to"]) for e in exported
            if e["name"] == name]
    assert ours == [("push", alice, None, "draft"), ("validate", olga, "draft", "validated"),
                    ("promote", olga, "validated", "staging"),
                    ("approve", bob, "staging", "staging"),
                    ("promote", olga, "staging", "production")]
    made = {e["details"]["user"] for e in exported if e["action"] == "create-user"}
    assert {alice, bob, olga} <= made


def test_a_failing_check_keeps_the_draft_and_fails_the_command(
        registry_process: RegistryProcess, cli: Cli, tmp_path: Path) -> None:
    url, admin = registry_process.url, registry_process.admin_token
    name = unique("broken")
    bundle = scaffold(tmp_path / "bundle", name)
    expected = bundle / "samples" / "expected.json"
    expected.write_text(expected.read_text().replace("0.75", "0.7"))
    cli("push", bundle, "--registry", url, token=admin)
    r = cli("promote", f"{name}@0.1.0", "--to", "validated", "--registry", url, token=admin,
            code=1)
    assert "check failed at stage sample_mismatch" in r.stderr
    r = cli("show", name, "--registry", url, token=admin)
    assert " draft " in r.stdout and "check: FAILED at sample_mismatch" in r.stdout
    r = cli("list", "--registry", url, code=FORBIDDEN)  # no token given, none saved: 401
    assert "UNAUTHORIZED" in r.stderr
    r = cli("login", url, "--token", admin + "x", code=FORBIDDEN)
    assert "invalid API token" in r.stderr and not cli.config.exists()
