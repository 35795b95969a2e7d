"""The queueing model behind ``baton plan``: what one configuration of workers and replicas
does at a given load. Pure arithmetic, no I/O; docs/scale.md states it with its assumptions.

* A worker's batch of ``b`` rows takes ``t(b) = t1 + k (b - 1)`` ms, a line through the
  check's medians of 1-row and 100-row calls (``k = (t100 - t1) / 99``).
* Greedy batching (src/baton/runtime/pool.py): a free worker takes everything queued. While
  a worker can answer each request alone (offered load ``a = r t(n) < 1`` per worker, ``r``
  requests/s of ``n`` rows), it does, and requests queue as in an M/M/W system (Erlang C).
  Past that, batches grow until a batch holds what arrived during the previous one:
  ``b = lambda t(b)``, so ``b = lambda (t1 - k) / (1 - lambda k)`` with ``lambda`` rows/s per
  worker; the worker is then always busy, and stable while ``b`` stays under the largest batch.
* A request waits for the first of the busy workers to finish (the least of ``W`` uniform
  residuals of the batch in progress), then for its own batch. The p99 is that wait's p99
  plus the batch, times the check's p99/p50: a slow moment slows both.
* The front (HTTP, JSON, contract checks) is one process per replica: an M/M/1 server of
  ``us_per_request + n us_per_row`` microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Keep each front and each worker's capacity at most this busy: a burst or a slower node
#: then still fits (the autoscaler's CPU target in docs/kubernetes.md is the same 70 %).
HEADROOM = 0.7
_LN100, _LN2 = math.log(100), math.log(2)


@dataclass(frozen=True)
class ModelTimes:
    """What the check measured on one worker, calls made one after another."""

    t1_ms: float
    t100_ms: float
    #: The model's own tail: p99/p50 of the check's calls (the mean of 1-row and 100-row).
    p99_ratio: float
    #: p99 of single 1-row calls: no deployment answers faster than this.
    single_p99_ms: float

    @property
    def k_ms(self) -> float:
        """Milliseconds each further row adds to a batch (never negative)."""
        return max(0.0, (self.t100_ms - self.t1_ms) / 99)

    def batch_ms(self, rows: float) -> float:
        return self.t1_ms + self.k_ms * (rows - 1)


@dataclass(frozen=True)
class FrontCost:
    """CPU the front process spends per request and per row, in microseconds."""

    us_per_request: float
    us_per_row: float
    source: str

    def seconds(self, rows: int) -> float:
        return (self.us_per_request + rows * self.us_per_row) / 1e6


@dataclass(frozen=True)
class Load:
    rps: float
    rows: int
    p99_ms: float
    max_batch_rows: int = 256


@dataclass(frozen=True)
class Prediction:
    """One configuration at one load."""

    workers: int
    replicas: int
    #: Rows per batch a worker settles at, and that batch's time.
    batch_rows: float
    batch_ms: float
    #: Fraction of time a worker computes (1.0: batches grow, the worker never waits).
    worker_busy: float
    #: Rows/s per worker over the most it can do with the largest batches.
    worker_utilisation: float
    front_utilisation: float
    #: Cores a replica uses: its front's share plus its workers' busy fractions.
    cpu_cores: float
    p50_ms: float
    p99_ms: float
    #: Requests/s the whole deployment serves with every part under the headroom.
    capacity_rps: float

    @property
    def stable(self) -> bool:
        return self.worker_utilisation < 1 and self.front_utilisation < 1


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/``servers`` queue of ``offered`` erlangs."""
    if offered >= servers:
        return 1.0
    term, total = 1.0, 1.0
    for i in range(1, servers):
        term *= offered / i
        total += term
    last = term * offered / servers * servers / (servers - offered)
    return last / (total + last)


def _residual(batch_ms: float, workers: int, waiting: float, quantile: float) -> float:
    """The ``quantile`` of waiting for the first of ``workers`` busy workers, each with a
    uniform residual of ``batch_ms``, when a request waits with probability ``waiting``."""
    tail = 1 - quantile
    if waiting <= tail:
        return 0.0
    return batch_ms * (1 - float((tail / waiting) ** (1 / workers)))


def settle(times: ModelTimes, rows_per_s: float, rows: int) -> tuple[float, float]:
    """The batch (rows) a worker settles at under ``rows_per_s``, and its busy fraction."""
    lam = rows_per_s / 1000  # rows per ms
    k = times.k_ms
    if lam * k >= 1:
        return math.inf, 1.0
    greedy = lam * (times.t1_ms - k) / (1 - lam * k)
    if greedy <= rows:
        return float(rows), lam * times.batch_ms(rows) / rows
    return greedy, 1.0


def predict(times: ModelTimes, front: FrontCost, load: Load, workers: int,
            replicas: int, cpu_limit: float = math.inf) -> Prediction:
    """What ``replicas`` replicas of ``workers`` workers each do at ``load``, each replica
    allowed ``cpu_limit`` cores (a busy worker takes a whole one; the front the rest)."""
    n = load.rows
    rows_per_worker = load.rps * n / (replicas * workers)
    batch, busy = settle(times, rows_per_worker, n)
    big = load.max_batch_rows
    utilisation = rows_per_worker / (big / times.batch_ms(big) * 1000)
    service = front.seconds(n)
    front_util = load.rps / replicas * service
    front_share = min(HEADROOM, cpu_limit - workers)
    front_cap = front_share / service if service > 0 else math.inf
    capacity = replicas * max(0.0, min(front_cap, HEADROOM * workers * big
                                       / times.batch_ms(big) * 1000 / n))
    if math.isinf(batch) or utilisation >= 1 or front_util >= 1:
        return Prediction(workers, replicas, batch, math.inf, 1.0, utilisation, front_util,
                          front_util + workers, math.inf, math.inf, capacity)
    t = times.batch_ms(batch)
    waiting = 1.0 if busy >= 1 else erlang_c(workers, workers * busy)
    w50, w99 = (_residual(t, workers, waiting, q) for q in (0.5, 0.99))
    f_ms = service * 1000 / (1 - front_util)  # M/M/1 sojourn: exponential of this mean
    p50 = w50 + t + f_ms * _LN2
    # what slows one batch (a busy node, a collection) slows its neighbours too: the tails
    # add up, and the check's p99/p50 scales the whole stay with the worker
    p99 = (w99 + t) * times.p99_ratio + f_ms * _LN100
    return Prediction(workers, replicas, batch, t, busy, utilisation, front_util,
                      front_util + workers * busy, p50, p99, capacity)
