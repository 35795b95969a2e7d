"""`baton status` and `baton top`: the engine's live figures in the terminal."""

from __future__ import annotations

import collections
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BATON, Server, run_baton
from tests.serving.test_registry_serving import version_of, wait_for
from tests.serving.test_stats_roles import scorer_dir, stats


def traffic(server: Server, stop: threading.Event) -> None:
    while not stop.is_set():
        server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 1}])
        server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 999}])


def test_status_shows_traffic_and_the_failing_stage(serve: Callable[..., Server],
                                                    chaos_bundle: Path,
                                                    baton_env: dict[str, str]) -> None:
    server = serve([chaos_bundle])
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(server, stop))
    t.start()
    try:
        r = run_baton("status", "--url", server.url, env={**baton_env, "COLUMNS": "250"})
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "chaos" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:3] == ["chaos", "1.0.0", "yes"] and cells[3] == "1/1"
    assert float(cells[5]) > 0  # requests per second
    assert cells[9] == "contract"  # errors are rising at the input contract


def test_status_shows_canary_and_shadow_candidates_beside_the_live_version(
        serve: Callable[..., Server], tmp_path: Path, baton_env: dict[str, str]) -> None:
    live = scorer_dir(tmp_path, "1.0.0", 2.0)
    canary = scorer_dir(tmp_path, "1.1.0", 3.0)
    shadow = scorer_dir(tmp_path, "2.0.0", 4.0)
    server = serve([live], "--canary", f"{canary}=10", "--shadow", str(shadow))
    wait_for(lambda: len(stats(server)) == 3 and all(m["ready"] for m in stats(server)))
    answered = collections.Counter(version_of(server) for _ in range(50))
    r = run_baton("status", "--url", server.url, env={**baton_env, "COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    rows = [[c.strip() for c in line.split("│") if c.strip()]
            for line in r.stdout.splitlines() if "scorer" in line]
    assert [row[:4] for row in rows] == [["scorer", "1.0.0 (live)", "yes", "1/1"],
                                         ["scorer", "1.1.0 (canary 10%)", "yes", "1/1"],
                                         ["scorer", "2.0.0 (shadow)", "yes", "1/1"]]
    requests = [int(row[7]) for row in rows]
    assert requests == [answered["1.0.0"], answered["1.1.0"], 0]  # shadow copies aren't requests


class Terminal:
    """A pseudo-terminal 250 columns wide: `top` draws frames only on a terminal."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 250, 0, 0))
        self.seen = ""

    def read_until(self, done: Callable[[str], bool], proc: subprocess.Popen[bytes],
                   what: str, timeout: float = 60, exiting: bool = False) -> str:
        """Read what the process draws until ``done(seen)``; it must keep running unless
        ``exiting``."""
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            left = deadline - time.monotonic()
            assert left > 0 and (exiting or proc.poll() is None), (
                f"no {what} within {timeout}s (exit {proc.poll()}):\n{self.seen}")
            if select.select([self.master], [], [], min(left, 0.1))[0]:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # EIO: the process closed its end (it exited)
                    if not exiting:
                        raise
        return self.seen


def test_top_refreshes_until_interrupted(serve: Callable[..., Server], chaos_bundle: Path,
                                         baton_env: dict[str, str]) -> None:
    server = serve([chaos_bundle])
    term = Terminal()
    proc = subprocess.Popen([*BATON, "top", "--url", server.url, "--interval", "0.3"],
                            # The terminal's size, also where the suite's own COLUMNS
                            # (pytest-xdist's workers have one) would narrow the table
                            # until its headers are cut to "r…".
                            env={**baton_env, "TERM": "xterm", "COLUMNS": "250",
                                 "LINES": "60"}, stdin=term.slave,
                            stdout=term.slave, stderr=term.slave)
    os.close(term.slave)
    try:
        # Interrupted only once it has drawn its table twice, i.e. it is in its refresh
        # loop: a fixed sleep sent Ctrl-C while a loaded machine was still importing.
        term.read_until(lambda s: s.count("req/s") >= 2, proc, "second frame")
        proc.send_signal(signal.SIGINT)
        # Keep reading: a terminal nobody reads fills up, and top's last frame (drawn on its
        # way out) would block in write() forever.
        term.read_until(lambda _: proc.poll() is not None, proc, "exit after Ctrl-C",
                        exiting=True)
        assert proc.wait() == 0, term.seen
        out = term.seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(term.master)
    assert "chaos" in out and "Traceback" not in out


def test_status_of_an_engine_that_is_down(baton_env: dict[str, str]) -> None:
    r = run_baton("status", "--url", "http://127.0.0.1:9", env=baton_env)
    assert r.returncode == 1 and "ENGINE_UNREACHABLE" in r.stderr


def test_status_shows_each_stream_with_its_backlog(serve: Callable[..., Server],
                                                   chaos_bundle: Path, tmp_path: Path,
                                                   baton_env: dict[str, str]) -> None:
    import json

    from tests.deploy.test_deployment import wait_lines

    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"action": "ok", "x": i}) + "\n" for i in range(20)) + "{broken\n")
    server = serve([chaos_bundle], "--input", f"file://{tmp_path}/in.jsonl",
                   "--output", f"file://{tmp_path}/out.jsonl",
                   "--dead-letter", f"file://{tmp_path}/dead.jsonl")
    wait_lines(tmp_path / "out.jsonl", 20)
    wait_for(lambda: server.client.get("/v1/stats").json()["streams"][0]["lag"] == 0)
    r = run_baton("status", "--url", server.url, env={**baton_env, "COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "consumed" in line)
    row = next(line for line in r.stdout.splitlines() if "file://" in line)
    names = [c.strip() for c in header.replace("┃", "│").split("│") if c.strip()]
    cells = dict(zip(names, [c.strip() for c in row.split("│") if c.strip()], strict=True))
    assert (cells["consumed"], cells["produced"], cells["dead letters"], cells["lag"],
            cells["in flight"]) == ("21", "20", "1", "0", "0")


def test_status_and_top_send_a_token(serve: Callable[..., Server], chaos_bundle: Path,
                                     tmp_path: Path, baton_env: dict[str, str]) -> None:
    from tests.security.engines import write_token_file

    tokens = write_token_file(tmp_path / "tokens.toml", {"ops": (("read",), None, False),
                                                          "old": (("read",), None, True)})
    server = serve([chaos_bundle], "--tokens", str(tmp_path / "tokens.toml"))
    env = {**baton_env, "COLUMNS": "250"}
    r = run_baton("status", "--url", server.url, "--token", tokens["ops"], env=env)
    assert r.returncode == 0 and "chaos" in r.stdout, r.stderr
    for args, code in ((("--token", tokens["old"]), "TOKEN_REVOKED"),
                       (("--token", "bte_nope"), "INVALID_TOKEN"), ((), "UNAUTHORIZED")):
        for command in ("status", "top"):
            r = run_baton(command, "--url", server.url, *args, env=env, timeout=60)
            assert r.returncode == 6 and f"error [{code}]" in r.stderr, (command, r.stderr)
            assert "Traceback" not in r.stderr
    from_env = run_baton("status", "--url", server.url, env={**env,
                                                            "BATON_TOKEN": tokens["ops"]})
    assert from_env.returncode == 0 and "chaos" in from_env.stdout, from_env.stderr
