"""``baton registry serve`` reads its address and log level through Settings, as ``baton
serve`` does: BATON_HOST, BATON_PORT and BATON_LOG_LEVEL apply, options win."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import BATON, free_port, run_baton, stop_process


def _serve_until_healthy(env: dict[str, str], url: str, log: Path,
                         *args: str) -> str:
    """Start the registry, wait (bounded) for /api/v1/health at ``url``, stop it; its output."""
    with open(log, "w+") as out:
        proc = subprocess.Popen([*BATON, "registry", "serve", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"registry serve exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"never healthy:\n{log.read_text()}"
                try:
                    if httpx.get(url + "/api/v1/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
        finally:
            stop_process(proc)
        return log.read_text()


def test_registry_serve_takes_host_port_and_log_level_from_the_environment(
        tmp_path: Path, baton_env: dict[str, str]) -> None:
    port = free_port()
    env = dict(baton_env, BATON_HOME=str(tmp_path / "home"), BATON_HOST="127.0.0.2",
               BATON_PORT=str(port), BATON_LOG_LEVEL="INFO")
    url = f"http://127.0.0.2:{port}"
    output = _serve_until_healthy(env, url, tmp_path / "registry.log")
    assert f"Baton registry at {url} " in output
    assert f"Uvicorn running on {url}" in output  # uvicorn's INFO lines: the level applied

    quiet = dict(env, BATON_LOG_LEVEL="warning", BATON_PORT="1")  # the option wins
    other = free_port()
    url = f"http://127.0.0.2:{other}"
    output = _serve_until_healthy(quiet, url, tmp_path / "quiet.log", "--port", str(other))
    assert f"Baton registry at {url} " in output and "Uvicorn running" not in output


def test_registry_serve_refuses_a_malformed_variable(tmp_path: Path,
                                                     baton_env: dict[str, str]) -> None:
    env = dict(baton_env, BATON_HOME=str(tmp_path / "home"), BATON_PORT="87OO")
    result = run_baton("registry", "serve", env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert ("error [INVALID_SETTING]: environment variable BATON_PORT='87OO' is not a whole "
            "number") in result.stderr
