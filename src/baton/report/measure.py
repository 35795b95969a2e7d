"""What the handoff report measures on a started model: throughput and latency over a grid
of rows per request and concurrent callers, memory and CPU of its workers, and the sample
outputs the data scientist recorded against the ones the service gives now.

Everything goes through the service's own request path (``predict_records`` / ``infer``:
decode, worker pool, output check), as a served request does, minus HTTP. Each cell of the
grid runs for a bounded time rather than a number of calls, so the report takes the same
time on a fast model and on a slow one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import psutil

from baton.check import latency_summary
from baton.check.samples import compare
from baton.runtime.worker import peak_rss
from baton.serving.model import ModelService
from baton.serving.samples import call, request_body

#: Rows per request and concurrent callers measured (issue 12: 1/10/100 rows, several levels).
ROWS = (1, 10, 100)
CONCURRENCY = (1, 4, 16)


async def throughput_grid(svc: ModelService, inputs: Any, seconds: float) -> list[dict[str, Any]]:
    """One cell per (rows, concurrency): requests and rows per second, latency quantiles,
    and the CPU the workers used meanwhile (in cores)."""
    send = _sender(svc)
    cells = []
    for rows in ROWS:
        body = request_body(svc.contract, inputs, rows)
        await send(body)  # warm: the first call of a size pays for its code paths
        for callers in CONCURRENCY:
            cells.append(await _cell(svc, send, body, rows, callers, seconds))
    return cells


def _sender(svc: ModelService) -> Callable[[bytes], Awaitable[bytes]]:
    return svc.predict_records if svc.contract.kind == "records" else svc.infer


async def _cell(svc: ModelService, send: Callable[[bytes], Awaitable[bytes]], body: bytes,
                rows: int, callers: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    cpu_before = _cpu_seconds(svc)
    started = time.perf_counter()
    deadline = started + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await send(body)
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - started
    summary = latency_summary(latencies)
    return {"rows": rows, "concurrency": callers, "requests": len(latencies),
            "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "rows_per_s": round(len(latencies) * rows / elapsed, 1),
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "worker_cpu_cores": round((_cpu_seconds(svc) - cpu_before) / elapsed, 2)}


def _processes(svc: ModelService) -> list[psutil.Process]:
    out = []
    for worker in svc.pool.workers:
        if worker is not None and worker.pid is not None:
            try:
                out.append(psutil.Process(worker.pid))
            except psutil.NoSuchProcess:
                pass
    return out


def _cpu_seconds(svc: ModelService) -> float:
    total = 0.0
    for p in _processes(svc):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def worker_memory(svc: ModelService) -> list[dict[str, Any]]:
    """Resident and peak resident memory of each worker process, in MiB."""
    out = []
    for p in _processes(svc):
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        peak = peak_rss(p.pid) or rss
        out.append({"pid": p.pid, "rss_mb": round(rss / 2**20, 1),
                    "peak_rss_mb": round(peak / 2**20, 1)})
    return out


async def sample_quality(svc: ModelService, inputs: Any, expected: Any,
                         tolerance: float) -> dict[str, Any]:
    """The outputs recorded when the model was packaged against the service's outputs now,
    field by field: agreement for labels, largest and mean absolute difference for numbers."""
    actual = await call(svc, request_body(svc.contract, inputs))
    fields = []
    for name in _output_names(expected):
        want, got = _column(expected, name), _column(actual, name)
        fields.append(_field_quality(name, want, got, tolerance))
    return {"rows": len(_column(expected, _output_names(expected)[0])) if fields else 0,
            "tolerance": tolerance, "differences": len(compare(expected, actual, tolerance)),
            "fields": fields}


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, list):
        return list(outputs[0]) if outputs else []
    return list(outputs)


def _column(outputs: Any, name: str) -> list[Any]:
    if isinstance(outputs, list):
        return [row.get(name) for row in outputs]
    return list(np.asarray(outputs.get(name)).reshape(-1).tolist())


def _field_quality(name: str, want: list[Any], got: list[Any], tol: float) -> dict[str, Any]:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in want + got)
    if numeric and want and len(want) == len(got):
        diffs = np.abs(np.asarray(want, dtype=np.float64) - np.asarray(got, dtype=np.float64))
        return {"field": name, "kind": "numeric", "max_abs_diff": float(diffs.max()),
                "mean_abs_diff": float(diffs.mean()),
                "within_tolerance": float(np.mean(diffs <= tol + tol * np.abs(want)))}
    same = sum(w == g for w, g in zip(want, got, strict=False))
    counts: dict[str, int] = {}
    for v in got:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return {"field": name, "kind": "label", "agreement": same / max(len(want), 1),
            "expected_rows": len(want), "actual_rows": len(got), "distribution": counts}
