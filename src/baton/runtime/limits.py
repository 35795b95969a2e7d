"""Per-worker limits: memory, CPU, open files and processes (docs/isolation.md).

Where the engine may create control groups (cgroup v1 memory, cpu and pids controllers,
writable below the engine's own groups, as for an engine running as root or with its
groups delegated), each worker gets its own: memory is a hard limit the kernel enforces
by stopping the worker (reported as ``MEMORY_LIMIT``), CPU is a quota of cores, and the
process count is a hard limit on forks (``PROCESS_LIMIT``). Elsewhere memory falls back to
an address-space limit (the model gets a MemoryError, reported as ``MEMORY_LIMIT``) and the
process count to RLIMIT_NPROC for an engine not running as root; a CPU quota, or a process
limit for root, that cannot be enforced is refused at start rather than silently left out.
Open files are always RLIMIT_NOFILE (``OPEN_FILES_LIMIT``).

Limits are applied by the engine to the worker's processes after its runner says hello and
before it loads the model, so no model code ever runs without them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import resource
import signal
import time
from pathlib import Path

import psutil

from baton.errors import WorkerError
from baton.runtime.isolation import Isolation

log = logging.getLogger("baton.worker")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: CPU quota period, in microseconds (the kernel's default).
CPU_PERIOD_US = 100_000
_SEQ = itertools.count(1)


class WorkerLimits:
    """The limits of one worker process (and every process it starts)."""

    def __init__(self, isolation: Isolation, label: str) -> None:
        self.isolation = isolation
        self.label = label
        #: controller -> this worker's group folder.
        self.groups: dict[str, Path] = {}
        #: rlimit -> value, set on every process of the worker.
        self.rlimits: dict[int, int] = {}
        self._seen = {"oom_kill": 0, "pids_max": 0}

    @classmethod
    def prepare(cls, isolation: Isolation, label: str) -> WorkerLimits:
        """Create what the limits need, or raise ``LIMIT_UNAVAILABLE`` naming the limit
        that cannot be enforced here and why."""
        limits = cls(isolation, label)
        wanted = {c for c, v in (("memory", isolation.memory_mb), ("cpu", isolation.cpus),
                                 ("pids", isolation.processes)) if v}
        available = {c: p for c in wanted if (p := _engine_group(c)) is not None}
        name = f"{_safe(label)}-{next(_SEQ)}"
        try:
            for controller, parent in available.items():
                folder = _own_folder(parent) / name
                folder.mkdir()
                limits.groups[controller] = folder
            limits._configure()
        except OSError as exc:
            limits.remove()
            raise WorkerError(f"{label}: cannot set the worker's limits in "
                              f"{exc.filename or 'its control group'}: {exc.strerror}",
                              code="LIMIT_UNAVAILABLE") from None
        if isolation.memory_mb and "memory" not in limits.groups:
            limits.rlimits[resource.RLIMIT_AS] = isolation.memory_mb * 1024 * 1024
        if isolation.open_files:
            limits.rlimits[resource.RLIMIT_NOFILE] = isolation.open_files
        missing = []
        if isolation.cpus and "cpu" not in limits.groups:
            missing.append(f"a CPU limit ({isolation.cpus:g}) needs the cpu control group")
        if isolation.processes and "pids" not in limits.groups:
            if os.geteuid() == 0:
                missing.append(f"a process limit ({isolation.processes}) needs the pids "
                               "control group when the engine runs as root")
            else:
                limits.rlimits[resource.RLIMIT_NPROC] = isolation.processes
        if missing:
            limits.remove()
            raise WorkerError(f"{label}: cannot enforce the worker's limits here: "
                              + "; ".join(missing) + " (writable under /sys/fs/cgroup; see "
                              "docs/isolation.md)", code="LIMIT_UNAVAILABLE")
        return limits

    def _configure(self) -> None:
        iso = self.isolation
        if "memory" in self.groups:
            limit = str(iso.memory_mb * 1024 * 1024)
            (self.groups["memory"] / "memory.limit_in_bytes").write_text(limit)
            swap = self.groups["memory"] / "memory.memsw.limit_in_bytes"
            with contextlib.suppress(OSError):  # no swap accounting: nothing to bound
                swap.write_text(limit)
        if "cpu" in self.groups:
            (self.groups["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.groups["cpu"] / "cpu.cfs_quota_us").write_text(
                str(max(1000, round(iso.cpus * CPU_PERIOD_US))))
        if "pids" in self.groups:
            (self.groups["pids"] / "pids.max").write_text(str(iso.processes))

    def apply(self, pids: list[int]) -> None:
        """Put the worker's processes (all there are before its model loads) under the
        limits. Raises ``LIMIT_UNAVAILABLE`` if any cannot be placed."""
        try:
            for pid in pids:
                for folder in self.groups.values():
                    (folder / "cgroup.procs").write_text(str(pid))
                for which, value in self.rlimits.items():
                    resource.prlimit(pid, which, (value, value))
        except (OSError, ValueError) as exc:
            raise WorkerError(f"{self.label}: cannot apply the worker's limits to process "
                              f"{pid}: {exc}", code="LIMIT_UNAVAILABLE") from None

    def hit(self) -> str | None:
        """The limit the worker ran into since the last call (``MEMORY_LIMIT`` when the
        kernel stopped it for memory, ``PROCESS_LIMIT`` when a fork was refused), or None."""
        found = None
        counters = {"oom_kill": ("memory", "memory.oom_control", "oom_kill"),
                    "pids_max": ("pids", "pids.events", "max")}
        for key, (controller, filename, field) in counters.items():
            folder = self.groups.get(controller)
            if folder is None:
                continue
            count = _counter(folder / filename, field)
            if count > self._seen[key]:
                self._seen[key] = count
                found = found or ("MEMORY_LIMIT" if key == "oom_kill" else "PROCESS_LIMIT")
        return found

    def kill_all(self) -> None:
        """End every process left in the worker's groups (children it started that
        outlived it, or left their session)."""
        for folder in self.groups.values():
            _kill_members(folder)

    def release(self) -> None:
        """End what is left in the worker's groups and remove them: now, or (in the running
        event loop) once the processes just killed are gone."""
        self.kill_all()
        if not self.remove():
            with contextlib.suppress(RuntimeError):  # no loop: left for the next sweep
                task = asyncio.get_running_loop().create_task(self._remove_later())
                _PENDING.add(task)
                task.add_done_callback(_PENDING.discard)

    async def _remove_later(self, deadline: float = 10.0) -> None:
        ends = time.monotonic() + deadline
        while not self.remove() and time.monotonic() < ends:
            await asyncio.sleep(0.05)

    def remove(self) -> bool:
        """Remove the worker's groups; False while processes are still ending in one (call
        again: a group holding a process cannot be removed)."""
        for controller, folder in list(self.groups.items()):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            del self.groups[controller]
        return not self.groups


#: The folders holding this engine's worker groups, one per controller, removed at exit.
_OWN: set[Path] = set()
#: Removals waiting for killed processes to end (kept referenced while they run).
_PENDING: set[asyncio.Task[None]] = set()


def _own_folder(parent: Path) -> Path:
    """``baton-PID`` below the engine's own group: where its workers' groups go. The first
    time, the folders that engines no longer running left behind are removed."""
    folder = parent / f"baton-{os.getpid()}"
    if folder not in _OWN:
        for stale in parent.glob("baton-*"):
            pid = stale.name.removeprefix("baton-")
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                _remove_tree(stale)
        folder.mkdir(exist_ok=True)
        if not _OWN:
            atexit.unregister(_remove_own)  # once, also when made again
            atexit.register(_remove_own)
        _OWN.add(folder)
    return folder


def _remove_own(deadline: float = 5.0) -> None:
    """At exit: end what is left in the engine's worker groups (a worker's children still
    exiting as the engine stops) and remove the groups once the kernel has let the
    processes go, for at most ``deadline`` seconds."""
    ends = time.monotonic() + deadline
    while True:
        for folder in list(_OWN):
            for group in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
                _kill_members(group)
            _remove_tree(folder)
            if not folder.exists():
                _OWN.discard(folder)  # made again if a worker starts after this
        if not _OWN or time.monotonic() > ends:
            return
        time.sleep(0.02)


def _remove_tree(folder: Path) -> None:
    """Remove an empty group and the empty groups below it (a group's files are not files:
    only its folders are removed)."""
    for sub in sorted((p for p in folder.glob("*") if p.is_dir()), reverse=True):
        _remove_tree(sub)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _engine_group(controller: str) -> Path | None:
    """The folder of the engine's own cgroup v1 group for ``controller``, if the engine
    may create groups below it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = CGROUP_ROOT / controller / path.lstrip("/")
            if os.access(folder, os.W_OK) and (folder / "cgroup.procs").is_file():
                return folder
    return None


def _members(folder: Path) -> list[int]:
    try:
        return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_members(folder: Path) -> None:
    for pid in _members(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _counter(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == field:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:64]
