"""A Ray cluster of several nodes on one machine: to try ``baton serve --ray`` and
``baton score --ray`` without a cluster, and for the tests and benchmarks.

Each node is one ``ray start --block`` in its own process group, stopped by that group
(never ``ray stop``, which ends every Ray process on the machine). Ray's ports all sit at
``base`` and above: 10002-19999 is its range for worker processes, so nothing of a node may
listen there. Authentication is off (``RAY_AUTH_MODE=disabled``), so use it only on a machine
nobody else reaches: Ray resolves a loopback node address to the machine's own, and its
processes listen there (docs/security.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from baton.errors import BatonError

#: Ports of one node, counted from its own base (each node gets ``PORTS_PER_NODE``).
_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-grpc-port",
          "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")
PORTS_PER_NODE = 1000
#: What ``ray start`` prints once its node has joined the cluster.
_STARTED = "Ray runtime started"
#: What ``ray start`` says when its node did not register in its fixed 30 s.
_GAVE_UP = "timed out during startup"
#: Starts of a worker node while Ray gives up on it (each gets Ray's 30 s).
START_TRIES = 3
#: Longest temporary folder for Ray: its session folder and sockets add up to 66 bytes.
_SHORT_ENOUGH = 40
#: Worker processes of a node listen in the upper part of its block.
_WORKER_PORTS = (100, PORTS_PER_NODE - 1)


def ray_environment() -> dict[str, str]:
    """The environment Ray's processes and a driver connecting to them need here."""
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    return env


@dataclass
class Node:
    """One ``ray start --block`` process (its process group is the node)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL every process of the node at once: a machine lost, not shut down."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@dataclass
class LocalCluster:
    """A head and ``workers`` more nodes; ``address`` is what a driver passes to Ray."""

    root: Path
    base: int = 20000
    cpus: int = 2
    nodes: list[Node] = field(default_factory=list)
    #: The highest node index (port block) a worker node has had: a node that replaces one
    #: gets a block of its own, never the ports of one that was lost or gave up.
    last_index: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.base}"

    def start(self, workers: int = 1, timeout: float = 120.0) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes.append(self._start_node("head", 0, ["--head", f"--port={self.base}",
                                                        "--include-dashboard=false",
                                                        f"--ray-client-server-port="
                                                        f"{self.base + 1}",
                                                        f"--dashboard-port={self.base + 2}"]))
        self.wait_for_nodes(1, timeout)
        for _ in range(workers):
            self.add_node(timeout)
        return self

    def add_node(self, timeout: float = 120.0) -> Node:
        """One more worker node, waited for until the head counts it. Started again, up to
        :data:`START_TRIES` times in all, while Ray gives up on it: ``ray start`` allows a
        raylet a fixed 30 s to register, which a loaded machine may not give it (seen
        under test runs on two busy cores, once twice in a row)."""
        tries = 0
        while True:
            tries += 1
            self.last_index = i = max(self.last_index + 1, len(self.nodes))
            node = self._start_node(f"worker{i}", i, [f"--address={self.address}"])
            self.nodes.append(node)
            try:
                self.wait_for_nodes(len(self.nodes), timeout)
                return node
            except BatonError:
                gave_up = node.proc.poll() is not None and \
                    _GAVE_UP in node.log.read_text(errors="replace")
                if not gave_up or tries == START_TRIES:
                    raise
                self.nodes.pop()
                node.kill()  # its process group: what it left running

    def _start_node(self, name: str, index: int, extra: list[str]) -> Node:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
        if ray is None:
            raise BatonError("Ray is not installed: pip install 'baton[ray]'",
                             code="RAY_MISSING")
        base = self.base + index * PORTS_PER_NODE + 10
        ports = [f"--{p}={base + k}" for k, p in enumerate(_PORTS)]
        low, high = _WORKER_PORTS
        log = self.root / f"{name}.log"
        cmd = [ray, "start", "--block", "--disable-usage-stats", f"--num-cpus={self.cpus}",
               f"--min-worker-port={base + low}",
               f"--max-worker-port={base + high}",
               f"--temp-dir={self.temp_dir()}" if index == 0 else "",
               *ports, *extra]
        with log.open("wb") as out:
            proc = subprocess.Popen([c for c in cmd if c], stdout=out, stderr=subprocess.STDOUT,
                                    env=ray_environment(), start_new_session=True)
        return Node(name, proc, log)

    def temp_dir(self) -> Path:
        """Ray's session files: under ``root`` when its sockets' paths fit the 107 bytes a
        Unix socket's path may have, else in a short folder of the system's temporary one."""
        folder = self.root / "ray"
        if len(str(folder)) > _SHORT_ENOUGH:
            folder = Path(tempfile.gettempdir()) / f"baton-ray-{self.base}"
        return folder

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        """Wait until the first ``count`` nodes have said they started (``ray start`` says
        so once the node has joined the head)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.proc.poll() is not None]
            if dead:
                raise BatonError(f"Ray node {dead[0].name} exited: see {dead[0].log}",
                                 code="RAY_START_FAILED")
            if all(_STARTED in n.log.read_text(errors="replace")
                   for n in self.nodes[:count]):
                return
            time.sleep(0.2)
        raise BatonError(f"the local Ray cluster did not reach {count} node(s) in "
                         f"{timeout:.0f} s (see {self.root})", code="RAY_START_FAILED")

    def stop(self) -> None:
        """End every node, workers first; a node is its process group (SIGTERM, then
        SIGKILL for what is left after a grace period)."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    node.proc.wait(timeout=5)  # Ray drains for up to 30 s
                except subprocess.TimeoutExpired:
                    pass
            node.kill()
        self.nodes.clear()
