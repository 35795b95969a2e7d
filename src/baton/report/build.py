"""Assemble the handoff report of one bundle: what an approver reads before approving.

The sections that need no model come from the bundle, its environment and the check
report (:mod:`baton.report.sections`); the measured ones through the service's own request
path (:mod:`baton.report.measure`), on the worker the check started when the report runs
the check itself, else on a worker started for them. A bundle whose check
failed still gets its report, without measurements: the page says where it failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from baton.bundle.loader import Bundle
from baton.env.builder import Environment
from baton.env.packages import installed
from baton.env.r import packages as r_packages
from baton.errors import BatonError
from baton.report import sections
from baton.report.html import render_html
from baton.report.measure import sample_quality, throughput_grid, worker_memory
from baton.serving.model import ModelService
from baton.serving.opening import ensure_environment, open_local
from baton.serving.samples import load_samples
from baton.settings import Settings

FORMAT = "baton-handoff-report/1"
#: Seconds each cell of the throughput grid runs (9 cells).
CELL_SECONDS = 0.4
#: Calls per latency figure when the report runs the check itself.
CHECK_ITERATIONS = 50


class WrittenReport(NamedTuple):
    json: Path
    html: Path


def build_report(ref: str | Path, settings: Settings, *, source: str | None = None,
                 check_report: dict[str, Any] | None = None, cell_seconds: float = CELL_SECONDS,
                 registry: dict[str, Any] | None = None,
                 check_out: Path | None = None) -> dict[str, Any]:
    """The report of the bundle at ``ref`` (a folder or archive). ``check_report``: a
    ``baton check`` report of the same digest (else the check runs now, measured on its
    own started worker, and is written to ``check_out`` when given — before anything
    else can fail); ``registry``: the version's stage, approvals and audit events, when
    it comes from a registry."""
    measured: dict[str, Any] | None = None
    if check_report is None:
        check_report, measured = _check_and_measure(ref, settings, cell_seconds, check_out)
    bundle = open_local(ref, settings)
    _same_digest(bundle, check_report)
    env = ensure_environment(bundle, settings)
    packages = (r_packages(env.path / "library") if env.language == "r"
                else installed(env.python))
    report: dict[str, Any] = {
        "format": FORMAT, "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "identity": sections.identity(bundle, source or str(ref), env),
        "contract": sections.contract(bundle),
        "dependencies": sections.dependencies(bundle, env, packages),
        "sbom": sections.sbom(packages),
        "check": sections.check_section(check_report),
        "performance": None, "quality": None, "resources": None,
        "drift_reference": sections.drift_reference(bundle),
        "registry": registry,
    }
    if check_report.get("passed"):
        report.update(measured or asyncio.run(_measured(bundle, env, settings, cell_seconds)))
        if report["performance"].get("grid"):
            report["resources"] = sections.resources(
                check_report, report["identity"], report["performance"]["memory"],
                report["performance"]["grid"])
    report["summary"] = summary_line(report)
    return report


def _same_digest(bundle: Bundle, check_report: dict[str, Any]) -> None:
    checked = (check_report.get("bundle") or {}).get("digest")
    if checked is not None and checked != bundle.digest:
        raise BatonError(f"the check report is of {checked}, not of this bundle "
                         f"({bundle.digest}): run 'baton check' on it again",
                         code="CHECK_REPORT_MISMATCH",
                         details={"checked": checked, "bundle": bundle.digest})


def _check_and_measure(ref: str | Path, settings: Settings, cell_seconds: float,
                       check_out: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``baton check`` of ``ref`` and, when it passes, the measurements taken on the worker
    the check started: the model loads once."""
    from baton.check import run_check

    measured: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def measure(svc: ModelService, bundle: Bundle, _env: Environment) -> None:
        try:
            measured.update(await _measure(svc, bundle, cell_seconds))
        except Exception as exc:  # the report's failure, not the check's
            failure.append(exc)

    checked = run_check(ref, settings, iterations=CHECK_ITERATIONS, on_passed=measure)
    if check_out is not None:
        checked.write(check_out)
    if failure:
        raise failure[0]
    return checked.to_dict(), measured or None


async def _measured(bundle: Bundle, env: Environment, settings: Settings,
                    cell_seconds: float) -> dict[str, Any]:
    """Start one worker, measure it, stop it, whatever happens (a check report was given)."""
    svc = ModelService(bundle, env, replace(settings, workers=1))
    await svc.pool.start()
    try:
        return await _measure(svc, bundle, cell_seconds)
    finally:
        await svc.pool.close(5.0)


async def _measure(svc: ModelService, bundle: Bundle, cell_seconds: float) -> dict[str, Any]:
    """Sample quality, the throughput grid and worker memory of a started service."""
    inputs, expected, tolerance = load_samples(bundle)
    if inputs is None:
        return {"performance": {"note": "the bundle declares no samples to send"}}
    quality = await sample_quality(svc, inputs, expected, tolerance)
    grid = await throughput_grid(svc, inputs, cell_seconds)
    return {"performance": {"workers_measured": 1, "cell_seconds": cell_seconds,
                            "grid": grid, "memory": worker_memory(svc)},
            "quality": quality}


def summary_line(report: dict[str, Any]) -> str:
    """One line an approver reads first (``baton approve`` prints it)."""
    ident, check = report["identity"], report["check"]
    parts = [f"{ident['name']}@{ident['version']} {ident['digest'][:19]}…"]
    if check.get("passed"):
        seconds = sum(s.get("seconds", 0.0) for s in check.get("stages") or [])
        parts.append(f"check passed ({len(check.get('stages') or [])} stages, {seconds:.1f} s)")
    else:
        parts.append(f"check FAILED at {check.get('failed_stage')}")
    perf = report.get("performance") or {}
    grid = perf.get("grid") or []
    if grid:
        single = next(c for c in grid if c["rows"] == 1 and c["concurrency"] == 1)
        best = max(grid, key=lambda c: c["rows_per_s"])
        parts.append(f"p50 {single['p50_ms']:.1f} ms at 1 row, up to {best['rows_per_s']:.0f} "
                     f"rows/s ({best['rows']} rows x {best['concurrency']})")
    res = report.get("resources")
    if res and res.get("measured_peak_worker_mb"):
        parts.append(f"{res['measured_peak_worker_mb']:.0f} MiB per worker")
    deps = report["dependencies"]
    parts.append(f"{report['sbom']['count']} packages, {len(deps['differences'])} differ "
                 "from packaging")
    return "; ".join(parts)


def write_report(report: dict[str, Any], output: Path) -> WrittenReport:
    """``report.json`` and ``report.html`` in the folder ``output``."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        written = WrittenReport(output / "report.json", output / "report.html")
        written.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        written.html.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise BatonError(f"cannot write the report to {output}: {exc.strerror}",
                         code="REPORT_UNWRITABLE", details={"path": str(output)}) from None
    return written
