"""``baton check``: prove that a bundle runs as it will in production, and measure it.

Stages, in order; the first failure ends the check and names its stage: ``manifest``,
``dependency_resolution``, ``import``, ``load``, ``input_contract``, ``model``,
``output_contract``, ``sample_mismatch``, ``single_records``, ``null_record``, ``latency``.

Whatever goes wrong, and wherever, becomes the failed stage of a report that is still written:
an exception Baton did not foresee is reported as ``CHECK_ERROR`` with its traceback. What the
worker and the pool log during the check goes into the report's ``log``, not onto the terminal.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from baton.bundle.loader import Bundle
from baton.check.report import (
    STAGE_EXIT,
    CheckReport,
    Stopped,
    fail_late,
    log_into,
    record_stage,
)
from baton.check.samples import (
    batch_dependent,
    compare,
    largest_difference,
    null_record,
    one_row,
    sample_rows,
    with_record,
)
from baton.env.builder import Environment
from baton.errors import BatonError, ContractViolation, ModelLoadError, SampleMismatch
from baton.runtime.worker import peak_rss
from baton.serving import v2
from baton.serving.opening import ensure_environment, open_local
from baton.serving.samples import call, load_samples, request_body
from baton.serving.service import ModelService
from baton.settings import Settings

__all__ = ["STAGE_EXIT", "CheckReport", "compare", "run_check"]


#: What runs on the checked model's started worker once every stage passed (the handoff
#: report measures there, instead of starting the model a second time).
OnPassed = Callable[[ModelService, Bundle, Environment], Awaitable[None]]


def run_check(ref: str | Path, settings: Settings, *, iterations: int = 200,
              on_passed: OnPassed | None = None) -> CheckReport:
    """Run every stage on the bundle at ``ref``; never raises: failures are in the report.
    ``on_passed`` runs on the started service after the last stage passed, before the
    worker stops; it keeps its own failures (one escaping it would fail the check late)."""
    report = CheckReport()
    with log_into(report):
        try:
            bundle, env = _prepare(report, ref, settings)
            asyncio.run(_run_stages(bundle, env, replace(settings, workers=1), report,
                                    iterations, on_passed))
        except Stopped:
            pass
        except Exception as exc:  # outside every stage: still a report, never a traceback
            fail_late(report, "check", exc)
    return report


def _prepare(report: CheckReport, ref: str | Path,
             settings: Settings) -> tuple[Bundle, Environment]:
    with record_stage(report, "manifest"):
        bundle = open_local(ref, settings)
        report.bundle = {"name": bundle.name, "version": bundle.version,
                         "digest": bundle.digest, "path": str(ref)}
    with record_stage(report, "dependency_resolution") as s:
        env = ensure_environment(bundle, settings)
        s.note = "cached" if env.cached else f"built in {env.build_seconds:.2f}s"
        report.measurements["environment"] = {"key": env.key, "cached": env.cached,
                                              "build_seconds": round(env.build_seconds, 3)}
    return bundle, env


async def _run_stages(bundle: Bundle, env: Environment, settings: Settings,
                      report: CheckReport, iterations: int,
                      on_passed: OnPassed | None = None) -> None:
    """Start the model's worker (stages ``import`` and ``load``), then the stages that need
    it; also after a failure, no worker outlives the check and the loop ends quietly."""
    started = time.perf_counter()
    svc: ModelService | None = None
    try:
        with record_stage(report, "import") as s:
            svc = ModelService(bundle, env, settings)
            try:
                await svc.pool.start()
            except ModelLoadError as exc:
                s.name = exc.details.get("stage", "load")
                raise
            worker = svc.pool.workers[0]
            load = float((worker.info.get("load_seconds") if worker else None) or 0.0)
            s.seconds = time.perf_counter() - started - load
        report.stage("load", load)
        report.measurements["load_seconds"] = round(time.perf_counter() - started, 3)
        await _Running(svc, bundle, report, iterations).run()
        if on_passed is not None:
            await on_passed(svc, bundle, env)
    finally:
        if svc is not None:
            await _shutdown(svc, report)


async def _shutdown(svc: ModelService, report: CheckReport) -> None:
    try:
        await svc.pool.close(5.0)
    except Exception as exc:
        fail_late(report, "shutdown", exc)


class _Running:
    """The stages that need the started worker: each one a method, in order."""

    def __init__(self, svc: ModelService, bundle: Bundle, report: CheckReport,
                 iterations: int) -> None:
        self.svc, self.bundle = svc, bundle
        self.report, self.iterations = report, iterations

    async def run(self) -> None:
        inputs, actual, tol = await self._samples()
        if inputs is not None:
            await self._single_records(inputs, actual, tol)
            await self._null_record(inputs, tol)
            await self._latency(inputs)

    async def _samples(self) -> tuple[Any, Any, float]:
        with record_stage(self.report, "input_contract") as s:
            inputs, expected, tol = load_samples(self.bundle)
            if inputs is None:
                s.name, s.note = "samples", "bundle declares no samples"
                return None, None, 0.0
            body = request_body(self.svc.contract, inputs)
            batch = (self.svc.records.decode(body) if self.svc.records is not None
                     else v2.decode_request(self.svc.contract, v2.parse_request(body)))
            s.note = f"{batch.rows} rows"
        output_error = None
        with record_stage(self.report, "model") as s:
            try:
                actual = await call(self.svc, body)
            except ContractViolation as exc:
                if exc.direction != "output":
                    s.name = "input_contract"
                    raise
                output_error = exc
        with record_stage(self.report, "output_contract"):
            if output_error is not None:
                raise output_error
        with record_stage(self.report, "sample_mismatch") as s:
            largest = largest_difference(expected, actual)
            self.report.measurements["sample_largest_difference"] = largest
            self.report.mismatches = compare(expected, actual, tol)
            if self.report.mismatches:
                first = self.report.mismatches[0]
                raise SampleMismatch(
                    f"{len(self.report.mismatches)} sample value(s) differ from the expected "
                    f"outputs (tolerance {tol:g}); first: record {first['record']}, field "
                    f"{first['field']!r}: expected {first['expected']!r}, "
                    f"got {first['got']!r}")
            s.note = f"all outputs within {tol:g}" + (
                f" (largest difference {largest:.3g})" if largest is not None else "")
        return inputs, actual, tol

    async def _single_records(self, inputs: Any, actual: Any, tol: float) -> None:
        """Each sample record alone gives the answer it got inside the batch."""
        with record_stage(self.report, "single_records") as s:
            rows = sample_rows(inputs)
            for i in range(rows):
                alone = await self._call(one_row(inputs, i), f"sample record {i} alone")
                batch_dependent(actual, alone, i, tol,
                                f"sample record {i}", "inside the sample batch")
            s.note = f"{rows} calls of one record, answers as in the batch"

    async def _null_record(self, inputs: Any, tol: float) -> None:
        """Every nullable field null in one record: it scores alone as inside a batch."""
        with record_stage(self.report, "null_record") as s:
            record = null_record(self.svc.contract, inputs)
            if record is None:
                s.note = "no nullable input fields"
                return
            nulls = [f.name for f in self.svc.contract.inputs if f.nullable]
            what = f"a sample record with {', '.join(nulls)} null"
            alone = await self._call([record], f"{what}, alone")
            merged = await self._call(with_record(inputs, record), f"{what}, in a batch")
            batch_dependent(merged, alone, sample_rows(inputs), tol, what,
                            "after the sample records")
            s.note = f"{len(nulls)} nullable field(s) null, alone and in a batch"

    async def _call(self, inputs: Any, what: str) -> Any:
        try:
            return await call(self.svc, request_body(self.svc.contract, inputs))
        except BatonError as exc:
            exc.message = f"{what}: {exc.message}"
            raise

    async def _latency(self, inputs: Any) -> None:
        with record_stage(self.report, "latency") as s:
            first = one_row(inputs, 0)
            bodies = (("rows_1", request_body(self.svc.contract, first)),
                      ("rows_100", request_body(self.svc.contract, inputs, 100)))
            latency = {}
            for label, body in bodies:
                latency[label] = await self._time_calls(body, label)
            self.report.measurements["latency"] = latency
            worker = self.svc.pool.workers[0]
            self.report.measurements["memory_mb"] = _memory(worker.pid if worker else None)
            s.note = f"{self.iterations} calls each of 1 and 100 rows"

    async def _time_calls(self, body: bytes, label: str) -> dict[str, Any]:
        what = label.replace("_", " ")
        try:
            await call(self.svc, body)  # warm
            times = []
            for _ in range(self.iterations):
                t0 = time.perf_counter()
                await call(self.svc, body)
                times.append((time.perf_counter() - t0) * 1000)
        except BatonError as exc:
            exc.message = f"measuring latency of {what}: {exc.message}"
            raise
        return latency_summary(times)


def latency_summary(times: list[float]) -> dict[str, Any]:
    """p50, p99 and mean of ``times`` (milliseconds), and how many there were."""
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "mean_ms": round(statistics.fmean(times), 3), "calls": len(times)}


def _memory(pid: int | None) -> dict[str, float]:
    if pid is None:
        return {}
    rss = psutil.Process(pid).memory_info().rss
    peak = peak_rss(pid) or rss
    return {"worker_rss_mb": round(rss / 2**20, 1), "worker_peak_rss_mb": round(peak / 2**20, 1)}
