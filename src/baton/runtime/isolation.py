"""How far a model's workers are kept from the host and from each other (docs/isolation.md).

Two levels: ``process`` (each worker its own process, in its own environment) and
``sandbox`` (the process under bubblewrap: a read-only view of only the system files, the
interpreter, the environment and the bundle; a private /tmp; no network unless the bundle
asks for it and the operator allows it; every capability dropped). Either level can carry
per-worker limits: memory, CPU, open files and processes.

The bundle's manifest (``[isolation]``) and the operator (``BATON_ISOLATION``,
``BATON_WORKER_*``) both choose; the stricter choice wins on every point, so neither can
loosen what the other asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

_Limit = TypeVar("_Limit", int, float)
LEVELS = ("process", "sandbox")
#: Error codes of a model stopped or refused by its isolation.
LIMIT_CODES = frozenset({"MEMORY_LIMIT", "PROCESS_LIMIT", "OPEN_FILES_LIMIT",
                         "SANDBOX_REFUSED"})


@dataclass(frozen=True)
class Isolation:
    level: str = "process"
    #: Under ``sandbox``: whether the model may open network connections. (A ``process``
    #: worker shares the host's network; only the sandbox takes it away.)
    network: bool = False
    #: Per-worker limits; 0: none.
    memory_mb: int = 0
    cpus: float = 0.0
    open_files: int = 0
    processes: int = 0

    @property
    def sandboxed(self) -> bool:
        return self.level == "sandbox"

    @property
    def limited(self) -> bool:
        return bool(self.memory_mb or self.cpus or self.open_files or self.processes)

    def stricter(self, other: Isolation) -> Isolation:
        """The stricter of two choices on every point: the sandbox if either asks for it,
        network only if both allow it, and each limit at the lower of the two given."""
        return Isolation(
            level="sandbox" if self.sandboxed or other.sandboxed else "process",
            network=self.network and other.network,
            memory_mb=_lower(self.memory_mb, other.memory_mb),
            cpus=_lower(self.cpus, other.cpus),
            open_files=_lower(self.open_files, other.open_files),
            processes=_lower(self.processes, other.processes))

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "network": self.network, "memory_mb": self.memory_mb,
                "cpus": self.cpus, "open_files": self.open_files, "processes": self.processes}

    def runner_env(self) -> dict[str, str]:
        """What the runner is told of its isolation, to name a refusal it meets."""
        env = {"BATON_ISOLATION": self.level}
        if self.sandboxed and not self.network:
            env["BATON_NO_NETWORK"] = "1"
        for name, value in (("MEMORY_MB", self.memory_mb), ("OPEN_FILES", self.open_files),
                            ("PROCESSES", self.processes)):
            if value:
                env[f"BATON_LIMIT_{name}"] = str(value)
        return env

    def explain(self, code: str) -> str:
        """What a LIMIT_CODES error means for this worker, to put before the model's own
        message."""
        return {"MEMORY_LIMIT": f"stopped at its memory limit ({self.memory_mb} MiB)",
                "PROCESS_LIMIT": f"stopped at its process limit ({self.processes} processes)",
                "OPEN_FILES_LIMIT": "the model reached its limit of open files "
                                    f"({self.open_files or 'the system default'})",
                "SANDBOX_REFUSED": "the sandbox refused the model: files outside /tmp are "
                                   "read-only" + ("" if self.network else
                                                  " and there is no network")
                                   + " (docs/isolation.md)"}[code]

    def describe(self) -> str:
        """One line for logs and reports: ``sandbox (no network), memory 512 MiB, ...``."""
        parts = [self.level + (f" ({'network' if self.network else 'no network'})"
                               if self.sandboxed else "")]
        for value, text in ((self.memory_mb, f"memory {self.memory_mb} MiB"),
                            (self.cpus, f"{self.cpus:g} CPU"),
                            (self.open_files, f"{self.open_files} open files"),
                            (self.processes, f"{self.processes} processes")):
            if value:
                parts.append(text)
        return ", ".join(parts)


def _lower(a: _Limit, b: _Limit) -> _Limit:
    """The lower of two limits where 0 means none."""
    return min(a, b) if a and b else a or b
