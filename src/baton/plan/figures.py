"""The figures ``baton plan`` starts from: a passed check of the bundle planned for.

The check is read as ``baton deploy`` reads it (:class:`baton.deploy.source.CheckFigures`:
the same refusals of another bundle's or a failed check, the same memory and load time), and
the latency medians that the queueing model needs are added from the same report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.deploy.source import CheckFigures, DeployError, Identity, check_data
from baton.plan.model import ModelTimes

if TYPE_CHECKING:
    from baton.settings import Settings


@dataclass(frozen=True)
class PlanInput:
    identity: Identity
    check: CheckFigures
    times: ModelTimes
    max_batch_rows: int
    #: How the bundle was named (a folder or archive), for the ``baton deploy`` command.
    ref: str = "BUNDLE"


def times_from_report(data: dict[str, Any], where: str) -> ModelTimes:
    """The per-call latencies of a check report (already validated as a passed check)."""
    latency = data["measurements"].get("latency") or {}
    try:
        one, hundred = latency["rows_1"], latency["rows_100"]
        p50_1, p50_100 = float(one["p50_ms"]), float(hundred["p50_ms"])
        p99_1, p99_100 = float(one["p99_ms"]), float(hundred["p99_ms"])
    except (KeyError, TypeError, ValueError):
        raise DeployError(f"{where} lacks measurements.latency.rows_1/rows_100 p50_ms and "
                          "p99_ms: run 'baton check' again", code="INVALID_CHECK_REPORT",
                          details={"report": where}) from None
    # each p99 of a few hundred calls rests on its few slowest: the mean of the two ratios
    # is steadier than either (bench/plan.py measured both at 1.7 to 2.2 from run to run)
    ratio = max((p99_1 / p50_1 + p99_100 / p50_100) / 2, 1.0)
    return ModelTimes(p50_1, p50_100, ratio, p99_1)


def plan_input(ref: str, check_report: Path | None, settings: Settings) -> PlanInput:
    """The bundle at ``ref`` and its check: ``check_report`` when given, else a check run now
    (as ``baton deploy kubernetes`` does)."""
    from baton.serving.opening import open_local

    bundle = open_local(ref, settings)
    identity = Identity.of_bundle(bundle)
    data, where = check_data(ref, check_report, settings)
    check = CheckFigures.from_report(data, where, identity)
    return PlanInput(identity, check, times_from_report(data, where),
                     bundle.manifest.serving.max_batch_rows, ref)
