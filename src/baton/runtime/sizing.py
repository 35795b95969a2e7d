"""How many workers a model gets when nothing says: two when the second one fits.

A second worker is what keeps a worker fault out of sight (the other one answers while it
restarts), but it costs a whole process with the model loaded. The pool starts one worker,
measures it once the model is loaded, and asks :func:`decide` whether to start a second.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

#: Workers a self-sized pool grows to when they fit.
AUTO_WORKERS = 2


def auto_worker_count(worker_bytes: int, available_bytes: int, cpus: int,
                      threads: int = 1) -> int:
    """Workers for a model whose first worker holds ``worker_bytes``: two when a second one
    fits with room to spare, i.e. it would take at most a quarter of the memory still
    available, and the CPUs hold both workers' threads; else one."""
    fits = worker_bytes > 0 and worker_bytes * 4 <= available_bytes
    return AUTO_WORKERS if fits and cpus >= AUTO_WORKERS * threads else 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a cpuset, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decide(worker_bytes: int, threads: int, reserved_cpus: int = 0) -> dict[str, Any]:
    """The decision for a worker measured at ``worker_bytes``, on this machine now, with
    what it was made from (``GET /v2/models/NAME`` shows it as ``parameters.sizing``).
    ``reserved_cpus``: CPUs the caller keeps busy itself (a scoring job's front process)."""
    available, cpus = int(psutil.virtual_memory().available), usable_cpus()
    return {"workers": auto_worker_count(worker_bytes, available, cpus - reserved_cpus,
                                         threads),
            "decided_by": "memory", "worker_mb": round(worker_bytes / 2**20, 1),
            "available_mb": round(available / 2**20), "cpus": cpus}


def peak_rss(pid: int) -> int | None:
    """The peak resident set of process ``pid`` in bytes (Linux's VmHWM), or None where it
    cannot be read (the process is gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
