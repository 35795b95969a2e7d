"""From a check's figures and a target load to the cheapest deployment that meets it.

Every number of workers per replica that fits a node is tried, each with the fewest replicas
that meet the target (fronts and workers under :data:`~baton.plan.model.HEADROOM`, the
predicted p99 under the target); the cheapest in requested CPU wins, then the one with
fewer replicas. Pods are sized by the rules of ``baton deploy`` (:func:`size_pod`), so the
values printed are the ones the manifests request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baton.deploy.sizing import Sizing, size_pod
from baton.errors import BatonError
from baton.plan.figures import PlanInput
from baton.plan.model import HEADROOM, FrontCost, Load, Prediction, predict

MAX_REPLICAS = 1000


class PlanError(BatonError):
    """The target cannot be met by any deployment: the reason says which limit stops it."""

    code = "PLAN_UNREACHABLE"
    http_status = 400
    exit_code = 2


@dataclass(frozen=True)
class Node:
    """The size of the cluster's nodes, when known: a replica must fit on one."""

    cpus: float | None = None
    memory_mb: int | None = None


@dataclass(frozen=True)
class Plan:
    source: PlanInput
    load: Load
    front: FrontCost
    prediction: Prediction
    sizing: Sizing
    min_replicas: int
    max_replicas: int
    reasoning: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        """What ``baton deploy kubernetes`` and the bundle's ``[serving]`` take."""
        p = self.prediction
        return {"workers": p.workers, "worker_threads": 1, "replicas": p.replicas,
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "resources": self.sizing.resources(),
                "startup_seconds": self.sizing.startup_seconds,
                "serving": {"workers": p.workers, "max_batch_rows": self.load.max_batch_rows},
                "command": f"baton deploy kubernetes {self.source.ref} --workers "
                           f"{p.workers} --min-replicas {self.min_replicas} --max-replicas "
                           f"{self.max_replicas}"}

    def to_dict(self) -> dict[str, Any]:
        p, t = self.prediction, self.source.times
        return {
            "bundle": {"name": self.source.identity.name,
                       "version": self.source.identity.version,
                       "digest": self.source.identity.digest},
            "target": {"rps": self.load.rps, "rows": self.load.rows, "p99_ms": self.load.p99_ms},
            "model": {"t1_ms": t.t1_ms, "t100_ms": t.t100_ms, "k_ms": round(t.k_ms, 5),
                      "p99_ratio": round(t.p99_ratio, 3), "check_report": self.source.check.report},
            "front": {"us_per_request": self.front.us_per_request,
                      "us_per_row": self.front.us_per_row, "source": self.front.source},
            "prediction": {"capacity_rps": round(p.capacity_rps, 1),
                           "p50_ms": round(p.p50_ms, 2), "p99_ms": round(p.p99_ms, 2),
                           "batch_rows": round(p.batch_rows, 2),
                           "batch_ms": round(p.batch_ms, 3),
                           "worker_busy": round(p.worker_busy, 3),
                           "worker_utilisation": round(p.worker_utilisation, 3),
                           "front_utilisation": round(p.front_utilisation, 3),
                           "cpu_cores": round(p.cpu_cores, 3)},
            "values": self.values(), "reasoning": self.reasoning}


def _front_line(front: FrontCost, load: Load) -> str:
    line = (f"front: {front.us_per_request:g} us/request + {front.us_per_row:g} us/row "
            f"({front.source})")
    if service := front.seconds(load.rows):
        line += (f": one front serves at most {HEADROOM / service:,.0f} req/s at "
                 f"{HEADROOM:.0%} of a core")
    return line


def floor_ms(source: PlanInput, load: Load) -> tuple[float, str]:
    """The fastest p99 any deployment gives one request of ``load.rows`` rows, and whence."""
    t = source.times
    if load.rows == 1:
        return t.single_p99_ms, f"{source.check.report}: measurements.latency.rows_1.p99_ms"
    return (t.batch_ms(load.rows) * t.p99_ratio,
            f"t({load.rows}) x p99/p50 from {source.check.report}")


def _fits(source: PlanInput, workers: int, node: Node) -> bool:
    s = size_pod(source.check, workers, 1)
    return ((node.cpus is None or s.cpu_limit_m <= node.cpus * 1000)
            and (node.memory_mb is None or s.memory_limit_mi <= node.memory_mb))


def _predict(source: PlanInput, front: FrontCost, load: Load, workers: int,
             replicas: int) -> Prediction:
    limit = size_pod(source.check, workers, 1).cpu_limit_m / 1000
    return predict(source.times, front, load, workers, replicas, limit)


def _ok(p: Prediction, load: Load, limit: float) -> bool:
    return (p.front_utilisation <= HEADROOM and p.worker_utilisation <= HEADROOM
            and p.cpu_cores <= limit and p.p99_ms <= load.p99_ms)


def _why_not(p: Prediction, load: Load, limit: float) -> str:
    why = []
    if p.cpu_cores > limit:
        why.append(f"{p.cpu_cores:.3f} cores used > the pod's CPU limit {limit:g}")
    if p.front_utilisation > HEADROOM:
        why.append(f"front {p.front_utilisation:.0%} busy > {HEADROOM:.0%} (its per-request "
                   "cost)")
    if p.worker_utilisation > HEADROOM:
        why.append(f"workers at {p.worker_utilisation:.0%} of their largest-batch capacity")
    if p.p99_ms > load.p99_ms:
        why.append(f"p99 {p.p99_ms:.1f} ms > {load.p99_ms:g} ms (batches of "
                   f"{p.batch_rows:.1f} rows take {p.batch_ms:.2f} ms)")
    return "; ".join(why)


def _fewest_replicas(source: PlanInput, front: FrontCost, load: Load,
                     workers: int) -> Prediction | None:
    limit = size_pod(source.check, workers, 1).cpu_limit_m / 1000
    for replicas in range(1, MAX_REPLICAS + 1):
        p = _predict(source, front, load, workers, replicas)
        if _ok(p, load, limit):
            return p
    return None


def recommend(source: PlanInput, load: Load, front: FrontCost, node: Node,
              workers_max: int) -> Plan:
    """The cheapest deployment of ``source`` meeting ``load``; :class:`PlanError` if none."""
    t = source.times
    floor, whence = floor_ms(source, load)
    if load.p99_ms < floor:
        raise PlanError(
            f"a p99 of {load.p99_ms:g} ms is below the model's own p99 for one request of "
            f"{load.rows} row(s), {floor:.2f} ms ({whence}): no number of workers or replicas "
            "makes one call faster; make the model faster or accept a p99 of at least "
            f"{floor:.1f} ms", code="P99_BELOW_MODEL",
            details={"p99_ms": load.p99_ms, "model_p99_ms": round(floor, 3)})
    lines = [f"model: t(b) = {t.t1_ms:g} + {t.k_ms:.4f} (b - 1) ms per batch of b rows "
             f"(medians of 1-row and 100-row calls, {source.check.report}); tail p99/p50 "
             f"{t.p99_ratio:.2f}; {source.check.worker_memory_mb.value:g} MB per worker",
             _front_line(front, load)]
    fitting = [w for w in range(1, workers_max + 1) if _fits(source, w, node)]
    if not fitting:
        raise PlanError(f"one worker does not fit a node of {node.cpus} CPUs and "
                        f"{node.memory_mb} MiB: a replica requests "
                        f"{size_pod(source.check, 1, 1).resources()['limits']}",
                        code="NODE_TOO_SMALL")
    if len(fitting) < workers_max:
        lines.append(f"node: {node.cpus or 'any'} CPUs, {node.memory_mb or 'any'} MiB -> at "
                     f"most {len(fitting)} worker(s) per replica (limits of deploy/sizing.py)")
    options: list[tuple[int, int, Prediction]] = []
    for w in fitting:
        p = _fewest_replicas(source, front, load, w)
        if p is None:
            lines.append(f"{w} worker(s)/replica: no replica count up to {MAX_REPLICAS} "
                         "meets the target")
            continue
        cost = p.replicas * size_pod(source.check, w, 1).cpu_request_m
        lines.append(f"{w} worker(s)/replica: {p.replicas} replica(s), p99 {p.p99_ms:.1f} ms,"
                     f" batches of {p.batch_rows:.1f} rows, front {p.front_utilisation:.0%},"
                     f" {p.cpu_cores:.2f} cores used, {cost}m CPU requested")
        options.append((cost, p.replicas, p))
    if not options:
        least = t.batch_ms(load.rows) * t.p99_ratio
        raise PlanError(f"no deployment of up to {workers_max} worker(s) per replica and "
                        f"{MAX_REPLICAS} replicas meets {load.rps:g} req/s at p99 "
                        f"{load.p99_ms:g} ms: even unloaded, a request's p99 is its batch "
                        f"time times p99/p50, {least:.2f} ms", code="PLAN_UNREACHABLE",
                        details={"p99_ms": load.p99_ms, "unloaded_p99_ms": round(least, 3)})
    _, _, best = min(options, key=lambda o: (o[0], o[1]))
    lines.append(f"chosen: {best.workers} worker(s) x {best.replicas} replica(s), the least "
                 "CPU requested")
    if best.replicas > 1:
        fewer = _predict(source, front, load, best.workers, best.replicas - 1)
        limit = size_pod(source.check, best.workers, 1).cpu_limit_m / 1000
        lines.append(f"limit: {best.replicas - 1} replica(s) would give "
                     f"{_why_not(fewer, load, limit)}")
    if best.workers < len(fitting):
        more = _predict(source, front, load, best.workers + 1, best.replicas)
        lines.append(f"limit: a worker more per replica would cost more CPU than it saves "
                     f"(p99 {more.p99_ms:.1f} ms)")
    min_replicas = max(2, best.replicas)
    lines.append(f"replicas: autoscaler from {min_replicas} (at least 2, so a node drain "
                 f"keeps one serving) to {2 * min_replicas}")
    return Plan(source, load, front, best, size_pod(source.check, best.workers, 1),
                min_replicas, 2 * min_replicas, lines)
