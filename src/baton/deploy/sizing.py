"""From a check's figures to a pod's resources and start-up probe.

The rules, each with its reason (docs/kubernetes.md lists them):

* start-up: the engine is ready once every worker has loaded its model. A node is busier
  and colder than the machine that ran the check, so the start-up probe allows three times
  the measured load time plus 30 s (the engine's own start, the image's first read), and at
  least 60 s.
* memory: each worker needs its measured peak (``VmHWM`` after the check's 100-row calls)
  plus half for larger batches, rounded up to 16 MiB; the engine's front process adds
  128 MiB (measured at 90 MiB serving the example after 200 requests). The same rule as the
  handoff report's (src/baton/report/sections.py), so the approver reads what the manifests
  request. The limit is 1.5 times the request: a pod that grows past it is killed and
  restarted rather than starving its neighbours on the node.
* CPU: the check does not measure CPU. A worker is one process using ``worker_threads``
  cores when busy; the pod asks for half of that per worker (the horizontal autoscaler
  adds pods at 70 % of the request) and may burst to all of it, plus 250m/500m for the
  front process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from baton.deploy.source import CheckFigures

PROBE_PERIOD_S = 5
FRONT_MEMORY_MB = 128
MEMORY_HEADROOM, MEMORY_LIMIT_RATIO = 1.5, 1.5
FRONT_CPU_REQUEST_M, FRONT_CPU_LIMIT_M = 250, 500
WORKER_CPU_REQUEST_M, WORKER_CPU_LIMIT_M = 500, 1000


@dataclass(frozen=True)
class Sizing:
    startup_seconds: int
    memory_request_mi: int
    memory_limit_mi: int
    cpu_request_m: int
    cpu_limit_m: int

    @property
    def startup_failure_threshold(self) -> int:
        return math.ceil(self.startup_seconds / PROBE_PERIOD_S)

    def resources(self) -> dict[str, dict[str, str]]:
        return {"requests": {"cpu": f"{self.cpu_request_m}m",
                             "memory": f"{self.memory_request_mi}Mi"},
                "limits": {"cpu": f"{self.cpu_limit_m}m", "memory": f"{self.memory_limit_mi}Mi"}}


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def size_pod(figures: CheckFigures, workers: int, worker_threads: int) -> Sizing:
    """The pod of ``workers`` workers of ``worker_threads`` threads each, from ``figures``."""
    startup = max(60, math.ceil(3 * figures.load_seconds.value + 30))
    per_worker = _round_up(figures.worker_memory_mb.value * MEMORY_HEADROOM, 16)
    request = _round_up(FRONT_MEMORY_MB + workers * per_worker, 16)
    cores = workers * worker_threads
    return Sizing(startup_seconds=startup, memory_request_mi=request,
                  memory_limit_mi=_round_up(request * MEMORY_LIMIT_RATIO, 16),
                  cpu_request_m=FRONT_CPU_REQUEST_M + cores * WORKER_CPU_REQUEST_M,
                  cpu_limit_m=FRONT_CPU_LIMIT_M + cores * WORKER_CPU_LIMIT_M)


def provenance(figures: CheckFigures, workers: int, worker_threads: int) -> dict[str, str]:
    """Annotations saying where each sized figure came from."""
    return {
        "baton.io/check-report": figures.report,
        "baton.io/load-seconds": f"{figures.load_seconds.value:g} "
                                  f"({figures.load_seconds.source})",
        "baton.io/worker-memory-mb": f"{figures.worker_memory_mb.value:g} "
                                      f"({figures.worker_memory_mb.source})",
        "baton.io/latency-p99-ms": f"{figures.latency_p99_ms.value:g} "
                                    f"({figures.latency_p99_ms.source})",
        "baton.io/startup-probe": "3 x load-seconds + 30 s, at least 60 s",
        "baton.io/memory": f"128Mi front + {workers} worker(s) x worker-memory-mb x 1.5 "
                            "(rounded up to 16Mi); limit 1.5 x request",
        "baton.io/cpu": f"250m front + 500m per worker thread ({workers} x {worker_threads}); "
                         "limit 500m + 1 core per thread (the check does not measure CPU)",
    }
