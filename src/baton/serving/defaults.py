"""Serving defaults a bundle leaves open, derived from what was measured of it.

A worker's timeout should sit well above the slowest legitimate batch and not much higher:
a hung worker holds its requests for the whole timeout. When ``baton check`` measured the
bundle, for exactly its digest, the timeout is derived from that measurement; otherwise it is
the fixed default. The report comes from the registry (the check it ran when the version was
validated) or from ``check-report.json`` next to the bundle's files.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from baton.bundle.loader import Bundle

log = logging.getLogger("baton.serving")

#: The timeout when nothing was measured, in seconds.
DEFAULT_TIMEOUT = 30.0
#: A derived timeout is never below this, in seconds: a busy machine slows a batch down.
TIMEOUT_FLOOR = 10.0
#: A derived timeout is this many times the measured p99 of a 100-row call, scaled to the
#: largest batch the model takes.
TIMEOUT_FACTOR = 10.0
REPORT_NAME = "check-report.json"


def derived_timeout(p99_100_rows_ms: float, max_batch_rows: int) -> float:
    """``max(TIMEOUT_FLOOR, TIMEOUT_FACTOR × p99 of 100 rows × max(1, max_batch_rows/100))``."""
    scale = max(1.0, max_batch_rows / 100)
    return max(TIMEOUT_FLOOR, TIMEOUT_FACTOR * p99_100_rows_ms / 1000 * scale)


def checked_latency(bundle: Bundle, report: dict[str, Any] | None = None) -> float | None:
    """The p99 (ms) of a 100-row call that a passed check of exactly this bundle measured:
    in ``report`` if given, else in the report next to its files; None without one."""
    where = "the registry's check report" if report is not None else REPORT_NAME
    try:
        if report is None:
            report = json.loads((bundle.path / REPORT_NAME).read_text())
        if report.get("bundle", {}).get("digest") != bundle.digest or not report["passed"]:
            return None
        p99 = float(report["measurements"]["latency"]["rows_100"]["p99_ms"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: %s unusable, timeout not derived from it: %s", bundle.name, where,
                    exc)
        return None
    return p99 if p99 > 0 else None


def default_timeout(bundle: Bundle,
                    report: dict[str, Any] | None = None) -> tuple[float, str]:
    """The timeout for a bundle that sets none, and where it comes from."""
    p99 = checked_latency(bundle, report)
    if p99 is None:
        return DEFAULT_TIMEOUT, "default"
    timeout = derived_timeout(p99, bundle.manifest.serving.max_batch_rows)
    return timeout, f"check: p99 {p99:g} ms for 100 rows"
