"""What the benchmarks in bench/ share: the machine and the source tree they describe, the
wait for a quiet machine, niceness for a process's autogroup, and py-spy for the profilers.

Each benchmark script puts bench/ on ``sys.path`` and imports this module.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = os.cpu_count()
    mem = round(psutil.virtual_memory().total / 2**30, 1)
    return {"cpu": cpu, "cores": cores, "memory_gib": mem, "kernel": platform.release(),
            "python": platform.python_version(),
            "description": f"{cores} cores ({cpu}), {mem} GiB RAM, Python "
                           f"{platform.python_version()}"}


def source_state() -> dict[str, Any]:
    """Which Baton was measured: the commit, and any uncommitted change to its source."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return res.stdout.rstrip() if res.returncode == 0 else ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src",
                                      "pyproject.toml").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": dirty}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process ``pid`` and every process under it (a
    server and its workers); 0 when it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _busy(t: Any) -> float:
    return t.user + t.nice + t.system


def wait_for_quiet(max_wait: float, threshold: float = 25.0) -> dict[str, float]:
    """Wait (up to ``max_wait`` s) until the machine uses < ``threshold`` % of a core over
    one second: it is shared, and a neighbour's burst skews a run."""
    started = time.perf_counter()
    while True:
        t0 = psutil.cpu_times()
        time.sleep(1.0)
        busy = 100 * (_busy(psutil.cpu_times()) - _busy(t0))
        waited = time.perf_counter() - started
        if busy < threshold or waited >= max_wait:
            return {"quiet_wait_s": round(waited, 1), "background_before_pct": round(busy, 1)}


def set_autogroup_nice(pid: int | str, nice: int) -> None:
    """With sched_autogroup on, each session (setsid) is scheduled as one group and a
    process's own niceness counts only inside its group: give the group the niceness too."""
    if not nice:
        return
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        pass


def ensure_py_spy(tools: Path) -> Path:
    """py-spy in a throwaway venv at ``tools`` (created with the project's uv)."""
    exe = tools / "bin" / "py-spy"
    if not exe.exists():
        uv = Path(sys.executable).parent / "uv"
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
        subprocess.run([str(uv), "venv", "--quiet", "--python",
                        f"{sys.version_info.major}.{sys.version_info.minor}", str(tools)],
                       env=env, check=True)
        subprocess.run([str(uv), "pip", "install", "--quiet", "--python",
                        str(tools / "bin" / "python"), "py-spy"], env=env, check=True)
    return exe
