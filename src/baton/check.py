"""``baton check``: prove that a bundle runs as it will in production, and measure it.

Stages, in order; a failure names its stage: ``manifest``, ``dependency_resolution``,
``import``, ``load``, ``input_contract``, ``model``, ``output_contract``, ``sample_mismatch``.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from baton.bundle.archive import ArchiveLimits
from baton.bundle.loader import Bundle, open_bundle
from baton.env.builder import EnvBuilder
from baton.errors import BatonError, ContractViolation, ModelError, ModelLoadError, WorkerError
from baton.serving import v2
from baton.serving.samples import call, load_samples, request_body
from baton.serving.service import ModelService
from baton.settings import Settings


@dataclass
class CheckReport:
    bundle: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    failed_stage: str | None = None
    error: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.failed_stage is None

    def stage(self, name: str, seconds: float, ok: bool = True, note: str = "") -> None:
        self.stages.append({"stage": name, "ok": ok, "seconds": round(seconds, 4),
                            "note": note})

    def fail(self, stage: str, err: BatonError, seconds: float = 0.0) -> CheckReport:
        self.stage(stage, seconds, ok=False, note=err.message)
        self.failed_stage = stage
        self.error = err.to_dict()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed_stage": self.failed_stage, "error": self.error,
                "bundle": self.bundle, "stages": self.stages,
                "measurements": self.measurements, "sample_mismatches": self.mismatches}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


def run_check(ref: str | Path, settings: Settings, *, iterations: int = 200) -> CheckReport:
    report = CheckReport()
    started = time.perf_counter()
    try:
        bundle = open_bundle(ref, settings.bundles_dir,
                             limits=ArchiveLimits.from_settings(settings))
    except BatonError as exc:
        return report.fail("manifest", exc, time.perf_counter() - started)
    report.bundle = {"name": bundle.name, "version": bundle.version, "digest": bundle.digest,
                     "path": str(ref)}
    report.stage("manifest", time.perf_counter() - started)
    builder = EnvBuilder(settings.envs_dir, wheelhouse=settings.wheelhouse,
                         offline=settings.offline)
    started = time.perf_counter()
    try:
        env = builder.ensure(bundle.manifest.environment)
    except BatonError as exc:
        return report.fail("dependency_resolution", exc, time.perf_counter() - started)
    report.stage("dependency_resolution", time.perf_counter() - started,
                 note="cached" if env.cached else f"built in {env.build_seconds:.2f}s")
    report.measurements["environment"] = {"key": env.key, "cached": env.cached,
                                          "build_seconds": round(env.build_seconds, 3)}
    svc = ModelService(bundle, env, replace(settings, workers=1))
    asyncio.run(_check_running(svc, bundle, report, iterations))
    return report


async def _check_running(svc: ModelService, bundle: Bundle, report: CheckReport,
                         iterations: int) -> None:
    started = time.perf_counter()
    try:
        await svc.pool.start()
    except ModelLoadError as exc:
        report.fail(exc.details.get("stage", "load"), exc, time.perf_counter() - started)
        return
    except WorkerError as exc:
        report.fail("import", exc, time.perf_counter() - started)
        return
    try:
        worker = svc.pool.workers[0]
        assert worker is not None
        load = worker.info.get("load_seconds") or 0.0
        report.stage("import", time.perf_counter() - started - load)
        report.stage("load", load)
        report.measurements["load_seconds"] = round(time.perf_counter() - started, 3)
        await _run_samples(svc, bundle, report)
        if report.passed:
            await _measure(svc, bundle, report, iterations)
            report.measurements["memory_mb"] = _memory(worker.pid)
    finally:
        await svc.pool.close(5.0)


async def _run_samples(svc: ModelService, bundle: Bundle, report: CheckReport) -> None:
    try:
        inputs, expected, tol = load_samples(bundle)
    except BatonError as exc:
        report.fail("input_contract", exc)
        return
    if inputs is None:
        report.stage("samples", 0.0, note="bundle declares no samples")
        return
    started = time.perf_counter()
    body = request_body(svc.contract, inputs)
    try:
        batch = (svc.records.decode(body) if svc.records is not None
                 else v2.decode_request(svc.contract, v2.parse_request(body)))
    except BatonError as exc:
        report.fail("input_contract", exc, time.perf_counter() - started)
        return
    report.stage("input_contract", time.perf_counter() - started, note=f"{batch.rows} rows")
    started = time.perf_counter()
    try:
        actual = await call(svc, body)
    except ContractViolation as exc:
        if exc.direction == "output":
            report.stage("model", time.perf_counter() - started)
            report.fail("output_contract", exc)
        else:
            report.fail("input_contract", exc, time.perf_counter() - started)
        return
    except (ModelError, WorkerError) as exc:
        report.fail("model", exc, time.perf_counter() - started)
        return
    report.stage("model", time.perf_counter() - started)
    report.stage("output_contract", 0.0)
    report.mismatches = compare(expected, actual, tol)
    if report.mismatches:
        first = report.mismatches[0]
        report.fail("sample_mismatch", BatonError(
            f"{len(report.mismatches)} sample value(s) differ from the expected outputs "
            f"(tolerance {tol:g}); first: record {first['record']}, field "
            f"{first['field']!r}: expected {first['expected']!r}, got {first['got']!r}",
            code="SAMPLE_MISMATCH"))
    else:
        report.stage("sample_mismatch", 0.0, note=f"all outputs within {tol:g}")


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return bool(a == b)


def compare(expected: Any, actual: Any, tol: float) -> list[dict[str, Any]]:
    """Differences between expected and actual outputs, as record/field/expected/got."""
    out: list[dict[str, Any]] = []
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [{"record": None, "field": None, "expected": f"{len(expected)} records",
                     "got": f"{len(actual)} records"}]
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            for key in e.keys() | a.keys():
                if not _close(e.get(key), a.get(key), tol):
                    out.append({"record": i, "field": key, "expected": e.get(key),
                                "got": a.get(key)})
        return out
    for name, exp in expected.items():
        e, a = np.asarray(exp), np.asarray(actual.get(name))
        if e.shape != a.shape:
            out.append({"record": None, "field": name, "expected": f"shape {list(e.shape)}",
                        "got": f"shape {list(a.shape)}"})
            continue
        bad = ~np.isclose(e, a, rtol=tol, atol=tol) if e.dtype.kind in "fiu" else e != a
        for idx in np.argwhere(bad)[:20]:
            out.append({"record": int(idx[0]), "field": name, "expected": e[tuple(idx)].item(),
                        "got": a[tuple(idx)].item()})
    return out


async def _measure(svc: ModelService, bundle: Bundle, report: CheckReport,
                   iterations: int) -> None:
    inputs, _, _ = load_samples(bundle)
    if inputs is None:
        return
    first = inputs[:1] if isinstance(inputs, list) else {k: v[:1] for k, v in inputs.items()}
    latency = {}
    bodies = (("rows_1", request_body(svc.contract, first)),
              ("rows_100", request_body(svc.contract, inputs, 100)))
    for label, body in bodies:
        await call(svc, body)  # warm
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            await call(svc, body)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        latency[label] = {"p50_ms": round(statistics.median(times), 3),
                          "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
                          "mean_ms": round(statistics.fmean(times), 3), "calls": iterations}
    report.measurements["latency"] = latency


def _memory(pid: int | None) -> dict[str, float]:
    if pid is None:
        return {}
    rss = psutil.Process(pid).memory_info().rss / 2**20
    peak = rss
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"worker_rss_mb": round(rss, 1), "worker_peak_rss_mb": round(peak, 1)}
