"""The report of ``baton check`` and how stages are recorded in it.

A stage runs inside :func:`record_stage`: whatever it raises is recorded as its failure
(an exception Baton did not foresee as ``CHECK_ERROR``, with its traceback) and ends the
check with :class:`Stopped`. Log lines of Baton's worker and pool go into the report while
the check runs (:func:`log_into`), never onto the terminal.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.errors import BatonError
from baton.runtime.runner import cut_lines

#: Exit codes by failed stage (see docs/cli.md). A stage not listed here can fail in
#: several ways and exits with its error's own code; an unforeseen error exits 1.
STAGE_EXIT = {"manifest": 2, "dependency_resolution": 4, "import": 5, "load": 5, "model": 5,
              "input_contract": 3, "output_contract": 3, "sample_mismatch": 3}
#: Lines of the check's log kept in the report (the last ones).
LOG_LINES = 400
#: Room for a stage's note, a line of the log, and the message printed on a failure: a
#: model's error message can be megabytes long (the report's ``error`` keeps it whole).
NOTE_CHARS, LOG_LINE_CHARS, MESSAGE_CHARS = 500, 2000, 1000


@dataclass
class CheckReport:
    bundle: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    failed_stage: str | None = None
    error: dict[str, Any] | None = None
    exit_code: int = 0
    log: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_LINES))

    @property
    def passed(self) -> bool:
        return self.failed_stage is None

    def stage(self, name: str, seconds: float, ok: bool = True, note: str = "") -> None:
        self.stages.append({"stage": name, "ok": ok, "seconds": round(seconds, 4),
                            "note": cut_lines(note, NOTE_CHARS)})

    def fail(self, stage: str, err: BatonError, seconds: float = 0.0) -> CheckReport:
        self.stage(stage, seconds, ok=False, note=err.message)
        self.failed_stage = stage
        self.error = err.to_dict()
        unforeseen = err.code == "CHECK_ERROR"
        self.exit_code = 1 if unforeseen else STAGE_EXIT.get(stage, err.exit_code)
        return self

    @property
    def message(self) -> str:
        """The failure's message, cut to print."""
        return cut_lines(self.error["message"], MESSAGE_CHARS) if self.error else ""

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed_stage": self.failed_stage, "error": self.error,
                "exit_code": self.exit_code, "bundle": self.bundle, "stages": self.stages,
                "measurements": self.measurements, "sample_mismatches": self.mismatches,
                "log": list(self.log)}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


class Stopped(Exception):
    """A stage failed and is recorded in the report: the check ends here."""


@dataclass
class Stage:
    name: str
    note: str = ""
    #: Seconds to record instead of the time the block took.
    seconds: float | None = None


def unforeseen(exc: Exception) -> BatonError:
    """An exception Baton did not foresee, as an error the report can hold."""
    return BatonError(f"{type(exc).__name__}: {exc}", code="CHECK_ERROR",
                      details={"traceback": cut_lines("".join(traceback.format_exception(exc)))})


@contextlib.contextmanager
def record_stage(report: CheckReport, name: str) -> Iterator[Stage]:
    """Time a stage; record it as passed, or as failed with whatever it raised."""
    s = Stage(name)
    started = time.perf_counter()
    try:
        yield s
    except Stopped:
        raise
    except Exception as exc:
        err = exc if isinstance(exc, BatonError) else unforeseen(exc)
        report.fail(s.name, err, time.perf_counter() - started)
        raise Stopped from None
    report.stage(s.name, time.perf_counter() - started if s.seconds is None else s.seconds,
                 note=s.note)


class _LogToReport(logging.Handler):
    def __init__(self, report: CheckReport) -> None:
        super().__init__(logging.INFO)
        self.report = report
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.report.log.extend(cut_lines(line, LOG_LINE_CHARS)
                               for line in self.format(record).splitlines())


@contextlib.contextmanager
def log_into(report: CheckReport) -> Iterator[None]:
    """The worker's, the pool's and asyncio's log lines (what the model printed, its
    tracebacks, restarts) go to the report. Baton's other warnings, such as a tampered
    extraction cache, still reach standard error: they are not about the model's run."""
    handler = _LogToReport(report)
    loggers = [logging.getLogger(name) for name in ("baton.worker", "baton.pool", "asyncio")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def fail_late(report: CheckReport, stage: str, exc: Exception) -> None:
    """An error after the stages ran: a failed ``stage`` if all had passed, else a log line
    (the first failure is the one the report names)."""
    err = exc if isinstance(exc, BatonError) else unforeseen(exc)
    if report.passed:
        report.fail(stage, err)
    else:
        report.log.append(f"then {stage} failed too: {err.message}")
