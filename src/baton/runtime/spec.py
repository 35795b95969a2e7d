"""What a worker of one model is started with: its command, environment and limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.runtime import sandbox
from baton.runtime.isolation import Isolation
from baton.runtime.runners import PYTHON, PYTHON_SCRIPT, Runner


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to start a worker for one model."""

    model: str
    python: Path  # what runs the runner: the environment's Python, or R's Rscript
    bundle_dir: Path
    #: The ``load`` message: entrypoint, artifact, method, contract kind, input/output names.
    load: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    load_timeout: float = 120.0
    #: Threads the model's numeric libraries may use (OMP, OpenBLAS, MKL).
    threads: int = 1
    #: The sandbox and limits the worker runs under (docs/isolation.md).
    isolation: Isolation = field(default_factory=Isolation)
    #: What ``python`` runs (runners.py); the environment a sandbox shows (None: python's).
    runner: Runner = PYTHON
    env_dir: Path | None = None
    #: Whether a pool may fork this model's workers from a template process that has
    #: imported its libraries (docs/protocol.md#worker-templates), where that applies.
    template: bool = True

    def command(self) -> list[str]:
        inner = self.runner.command(self.python)
        if not self.isolation.sandboxed:
            return inner
        return sandbox.command(inner, python=self.python, bundle_dir=self.bundle_dir,
                               runner=self.runner.files, network=self.isolation.network,
                               env_dir=self.env_dir, system=self.runner.system)

    def environment(self) -> dict[str, str]:
        """The worker's environment variables (docs/protocol.md#process-launch)."""
        threads = str(self.threads)
        env = {**sandbox.environment(os.environ, self.isolation.sandboxed),
               "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, **self.env, **self.isolation.runner_env()}
        env.pop("VIRTUAL_ENV", None)
        return env

    @property
    def forks(self) -> bool:
        """Whether this model's workers may come from a template: the Python runner, at the
        ``process`` level, without limits (a worker under limits or in a sandbox runs no
        line of model code outside them, so it starts from scratch), on Linux."""
        return (self.template and self.runner.script == PYTHON_SCRIPT
                and not self.runner.shell and not self.isolation.sandboxed
                and not self.isolation.limited and hasattr(os, "pidfd_open"))
