"""Choosing workers and replicas, and refusing what cannot be met, with the reason."""

from __future__ import annotations

import pytest

from baton.deploy.sizing import size_pod
from baton.deploy.source import CheckFigures, Figure, Identity
from baton.plan import FrontCost, Load, ModelTimes, Node, PlanError, PlanInput, recommend


def source(t1: float = 2.0, t100: float = 2.0, ratio: float = 1.5, single_p99: float = 3.0,
           memory_mb: float = 100.0) -> PlanInput:
    check = CheckFigures(Figure(2.0, "test: load_seconds"),
                         Figure(memory_mb, "test: memory"), Figure(3.0, "test: p99"), "test")
    return PlanInput(Identity("m", "1.0.0", "sha256:" + "0" * 64, "test"), check,
                     ModelTimes(t1, t100, ratio, single_p99), max_batch_rows=256)


def test_a_p99_below_the_models_own_single_call_is_refused_with_the_reason() -> None:
    with pytest.raises(PlanError) as err:
        recommend(source(single_p99=7.5), Load(100, 1, 5.0), FrontCost(0, 0, "t"), Node(), 8)
    assert err.value.code == "P99_BELOW_MODEL" and err.value.exit_code == 2
    assert "below the model's own p99" in err.value.message
    assert "7.50 ms" in err.value.message


def test_a_node_too_small_for_one_worker_is_refused() -> None:
    with pytest.raises(PlanError) as err:
        recommend(source(memory_mb=4000), Load(100, 1, 50), FrontCost(0, 0, "t"),
                  Node(memory_mb=1024), 8)
    assert err.value.code == "NODE_TOO_SMALL"


def test_an_unreachable_p99_is_refused() -> None:
    # above the single-call p99 (2 ms) but below what a request gets even with no queue:
    # t(1) x p99/p50 = 2 x 1.5 = 3 ms
    with pytest.raises(PlanError) as err:
        recommend(source(single_p99=2.0), Load(1000, 1, 2.5), FrontCost(0, 0, "t"), Node(), 2)
    assert err.value.code == "PLAN_UNREACHABLE"
    assert "even unloaded, a request's p99 is its batch time times p99/p50, 3.00 ms" in (
        err.value.message)


def test_the_front_caps_a_replica_and_more_replicas_follow() -> None:
    # 1 ms of front per request. One worker per replica: the pod's limit (1.5 cores) leaves
    # the front 0.5 core beside a busy worker. 1,200/s on 2 replicas: 600/s each, batches
    # of 1.2 rows keep the worker busy, 0.6 + 1 = 1.6 cores > 1.5. On 3: 400/s each,
    # requests alone, worker 80 % busy, 0.4 + 0.8 = 1.2 cores.
    plan = recommend(source(), Load(1200, 1, 50), FrontCost(1000, 0, "t"), Node(), 1)
    p = plan.prediction
    assert (p.workers, p.replicas) == (1, 3)
    assert p.cpu_cores == pytest.approx(1.2)
    assert any("2 replica(s) would give 1.600 cores used > the pod's CPU limit 1.5" in line
               for line in plan.reasoning)


def test_the_cheapest_in_cpu_wins_and_values_match_deploys_sizing() -> None:
    plan = recommend(source(), Load(300, 1, 50), FrontCost(50, 0, "t"), Node(), 4)
    p = plan.prediction
    assert (p.workers, p.replicas) == (1, 1)  # one worker suffices: more would only cost
    values = plan.values()
    assert values["resources"] == size_pod(plan.source.check, 1, 1).resources()
    assert (values["workers"], values["min_replicas"], values["max_replicas"]) == (1, 2, 4)
    assert values["serving"] == {"workers": 1, "max_batch_rows": 256}
    assert values["command"].endswith("--workers 1 --min-replicas 2 --max-replicas 4")


def test_node_cpus_bound_the_workers_per_replica() -> None:
    plan = recommend(source(), Load(300, 1, 50), FrontCost(50, 0, "t"), Node(cpus=2), 8)
    assert "at most 1 worker(s) per replica" in "\n".join(plan.reasoning)
