"""Serving defaults a bundle leaves open, derived from what was measured of it.

A worker's timeout should sit well above the slowest legitimate batch and not much higher:
a hung worker holds its requests for the whole timeout. When ``baton check`` measured the
bundle (its report, ``check-report.json``, next to the bundle's files and for exactly its
digest), the timeout is derived from that measurement; otherwise it is the fixed default.
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


def checked_latency(bundle: Bundle) -> float | None:
    """The p99 (ms) of a 100-row call that a passed check of exactly this bundle measured,
    or None when no such report is next to its files."""
    path = bundle.path / REPORT_NAME
    try:
        report: dict[str, Any] = json.loads(path.read_text())
        if report.get("bundle", {}).get("digest") != bundle.digest or not report["passed"]:
            return None
        p99 = float(report["measurements"]["latency"]["rows_100"]["p99_ms"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: %s unusable, timeout not derived from it: %s", bundle.name, path,
                    exc)
        return None
    return p99 if p99 > 0 else None


def default_timeout(bundle: Bundle) -> tuple[float, str]:
    """The timeout for a bundle that sets none, and where it comes from."""
    p99 = checked_latency(bundle)
    if p99 is None:
        return DEFAULT_TIMEOUT, "default"
    timeout = derived_timeout(p99, bundle.manifest.serving.max_batch_rows)
    return timeout, f"check: p99 {p99:g} ms for 100 rows"
