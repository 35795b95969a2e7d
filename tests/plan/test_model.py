"""The queueing model's arithmetic, against cases computed by hand."""

from __future__ import annotations

import math

import pytest

from baton.plan.model import FrontCost, Load, ModelTimes, erlang_c, predict, settle

FREE = FrontCost(0, 0, "none")


def test_batch_time_is_a_line_through_the_check_medians() -> None:
    t = ModelTimes(t1_ms=2.0, t100_ms=3.98, p99_ratio=1.0, single_p99_ms=2.0)
    assert t.k_ms == pytest.approx(0.02)
    assert t.batch_ms(51) == pytest.approx(3.0)  # 2 + 0.02 * 50
    # a model slower on one row than on a hundred never gets a negative slope
    assert ModelTimes(5.0, 4.0, 1.0, 5.0).k_ms == 0


def test_greedy_batches_settle_where_a_batch_holds_what_arrived_during_the_last() -> None:
    t = ModelTimes(2.0, 3.98, 1.0, 2.0)
    # 1,000 rows/s = 1 row/ms: b = 1 * (2 - 0.02) / (1 - 0.02) = 2.0204...
    batch, busy = settle(t, 1000, 1)
    assert batch == pytest.approx(1.98 / 0.98) and busy == 1.0
    assert batch == pytest.approx(t.batch_ms(batch) * 1.0)  # b = lambda t(b)
    # 100 rows/s: each request alone, the worker busy 100/s * 2 ms = 20 % of the time
    assert settle(t, 100, 1) == (1.0, pytest.approx(0.2))
    # lambda k >= 1: every row adds more work than time passes; no batch is large enough
    assert settle(t, 50_000, 1) == (math.inf, 1.0)


def test_erlang_c() -> None:
    assert erlang_c(1, 0.3) == pytest.approx(0.3)  # M/M/1: an arrival waits with prob rho
    # 2 servers, 1 erlang: (1/2! * 2/(2-1)) / (1 + 1 + 1) = 1/3
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(2, 2.0) == 1.0


def test_light_load_one_worker() -> None:
    t = ModelTimes(2.0, 2.0, 2.0, 3.0)
    p = predict(t, FREE, Load(rps=100, rows=1, p99_ms=50), workers=1, replicas=1)
    # busy 0.2: half the requests never wait (p50 = one batch); the p99 waits
    # 2 * (1 - 0.01 / 0.2) = 1.9 ms, then its own 2 ms, times p99/p50 = 2
    assert (p.batch_rows, p.worker_busy) == (1.0, pytest.approx(0.2))
    assert p.p50_ms == pytest.approx(2.0)
    assert p.p99_ms == pytest.approx((1.9 + 2.0) * 2)
    assert p.cpu_cores == pytest.approx(0.2)


def test_saturated_worker_with_a_front() -> None:
    t = ModelTimes(2.0, 2.0, 2.0, 3.0)
    front = FrontCost(100, 0, "test")
    p = predict(t, front, Load(rps=1000, rows=1, p99_ms=50), workers=1, replicas=1,
                cpu_limit=1.5)
    # b = 1 row/ms * 2 ms = 2 rows; the wait for the batch in progress is uniform on 2 ms
    # front: 100 us at 1,000/s = 10 % busy, M/M/1 sojourn mean 0.1 / 0.9 ms
    f = 0.1 / 0.9
    assert p.batch_rows == pytest.approx(2.0) and p.worker_busy == 1.0
    assert p.front_utilisation == pytest.approx(0.1)
    assert p.p50_ms == pytest.approx(1.0 + 2.0 + f * math.log(2))
    assert p.p99_ms == pytest.approx((1.98 + 2.0) * 2 + f * math.log(100))
    assert p.cpu_cores == pytest.approx(1.1)
    # the front may use what the pod's limit leaves beside its busy worker: 0.5 core
    assert p.capacity_rps == pytest.approx(0.5 / 100e-6)


def test_two_workers_halve_the_load_and_share_the_wait() -> None:
    t = ModelTimes(2.0, 2.0, 1.0, 2.0)
    p = predict(t, FREE, Load(rps=500, rows=1, p99_ms=50), workers=2, replicas=1)
    # 250/s each, 0.5 busy; 2 servers at 1 erlang: P(wait) = 1/3; the wait is the least of
    # two uniform residuals: p99 = 2 * (1 - (0.01 / (1/3)) ** 0.5)
    assert p.worker_busy == pytest.approx(0.5)
    assert p.p99_ms == pytest.approx(2 * (1 - (0.03) ** 0.5) + 2.0)


def test_overload_predicts_no_finite_latency() -> None:
    t = ModelTimes(2.0, 3.98, 1.0, 2.0)
    p = predict(t, FREE, Load(rps=60_000, rows=1, p99_ms=50), workers=1, replicas=1)
    assert not p.stable and math.isinf(p.p99_ms)
