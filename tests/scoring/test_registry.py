"""``baton score NAME@VERSION --registry URL``: only staging or production versions."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.bundle.archive import build_archive
from baton.registry.client import RegistryClient
from tests.conftest import BATON, free_port, run_baton
from tests.scoring.conftest import good_rows, read_jsonl, write_jsonl


@pytest.fixture
def registry(tmp_path: Path, baton_env: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """A registry on SQLite; yields its URL, an admin token and its public key."""
    env = dict(baton_env, BATON_HOME=str(tmp_path / "registry-home"))
    token = run_baton("registry", "bootstrap-admin", "root", env=env).stdout.strip()
    key = run_baton("registry", "key", env=env).stdout.split()[0]
    port = free_port()
    proc = subprocess.Popen([*BATON, "registry", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    probe = RegistryClient(url, token)
    while True:
        try:
            probe.whoami()
            break
        except Exception:
            assert time.monotonic() < deadline, "registry did not start"
            time.sleep(0.1)
    probe.close()
    yield url, token, key
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def test_score_a_registry_version_in_staging(registry: tuple[str, str, str],
                                             scorer_bundle: Path, baton_env: dict[str, str],
                                             tmp_path: Path) -> None:
    url, token, key = registry
    client = RegistryClient(url, token)
    client.push(build_archive(scorer_bundle, tmp_path / "archives").path)
    env = dict(baton_env, BATON_TOKEN=token)
    inp = write_jsonl(tmp_path / "in.jsonl", good_rows(20))
    args = ("score", "scorer@1.0.0", "--registry", url, "--input", inp, "--output",
            tmp_path / "out.jsonl")
    r = run_baton(*args, env=env)
    assert r.returncode == 6 and "REGISTRY_KEY_REQUIRED" in r.stderr  # only what is signed
    env["BATON_REGISTRY_KEY"] = key
    r = run_baton(*args, env=env)
    assert r.returncode == 6 and "STAGE_NOT_ALLOWED" in r.stderr  # a draft is not scored
    client.promote("scorer@1.0.0", "validated")
    client.promote("scorer@1.0.0", "staging")
    client.close()
    r = run_baton(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert [o["row"] for o in read_jsonl(tmp_path / "out.jsonl")] == list(range(20))
