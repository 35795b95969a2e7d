"""Handoff reports kept beside the versions they describe (see docs/report.md).

When the registry validates a version, its check runner also writes the handoff report
(``baton report`` in the same child process as ``baton check``) and hands it back under
the ``handoff`` key; :meth:`ReportStore.keep` stores its JSON and HTML by the version's
digest, next to the archive blobs, each file written whole and renamed into place. A
version's report is read with the version's own read scope; the JSON answer carries the
version's live stage, approvals and audit trail, the page is the one written at validation.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from baton.errors import BatonError, NotFound

Kind = Literal["json", "html"]
log = logging.getLogger("baton.registry")
#: The report page may load nothing: the same policy its own ``<meta>`` declares.
PAGE_HEADERS = {"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                           "img-src data:",
                "x-content-type-options": "nosniff", "cache-control": "private, no-store"}


class ReportStore:
    """A folder of ``<sha256 hex>.json`` / ``.html`` reports, sharded as the blobs are."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str, kind: Kind) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise BatonError(f"not a sha256 digest: {digest!r}", code="INVALID_DIGEST",
                             details={"digest": digest})
        return self.root / hexd[:2] / f"{hexd}.{kind}"

    def keep(self, digest: str, check_result: dict[str, Any]) -> bool:
        """Store the ``handoff`` report a check runner returned (removed from
        ``check_result``, which the database keeps); whether there was one."""
        handoff = check_result.pop("handoff", None)
        if not isinstance(handoff, dict) or not isinstance(handoff.get("html"), str):
            return False
        self._write(self.path(digest, "json"), json.dumps(handoff["json"]).encode())
        self._write(self.path(digest, "html"), handoff["html"].encode())
        return True

    def has(self, digest: str) -> bool:
        return self.path(digest, "html").is_file()

    def read(self, digest: str, kind: Kind) -> bytes:
        path = self.path(digest, kind)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no handoff report for {digest}: the registry writes one when it "
                           "validates a version ('baton promote REF --to validated'); "
                           "'baton report REF' writes one locally", code="REPORT_NOT_FOUND",
                           details={"digest": digest}) from None

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def report_paths(name: str, version: str) -> dict[str, str]:
    """Where the API serves a version's report, relative to the registry's URL."""
    base = f"/api/v1/bundles/{name}/{version}/report"
    return {"json": base, "html": base + ".html"}


def with_report(store: ReportStore, described: dict[str, Any]) -> dict[str, Any]:
    """A version's description with its report's paths (``report``) when it has one."""
    if store.has(described["digest"]):
        described["report"] = report_paths(described["name"], described["version"])
    return described


def registry_record(described: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """A report's ``registry`` section: the version's stage, author, approvals, signed
    decision and its own audit events (``events`` may hold the model's other versions')."""
    return {"stage": described["stage"], "author": described["author"],
            "created_at": described["created_at"],
            "approvals": described.get("approvals", []),
            "decision": described.get("decision"),
            "audit": [e for e in events if e.get("version") == described["version"]]}


def served_json(stored: bytes, described: dict[str, Any],
                events: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored report with the version's registry record as it is now."""
    report: dict[str, Any] = json.loads(stored)
    report["registry"] = registry_record(described, events)
    return report


#: Seconds each throughput cell of a report written at validation runs (9 cells).
CELL_SECONDS = 0.25


def written_report(out: Path, proc: subprocess.CompletedProcess[str]) -> dict[str, Any] | None:
    """The handoff report ``baton report`` wrote into ``out`` beside a passed check:
    ``{"json": …, "html": …}``; None (and a log line) when it could not be written, which
    leaves the validation as the check decided it."""
    try:
        return {"json": json.loads((out / "report.json").read_text()),
                "html": (out / "report.html").read_text(encoding="utf-8")}
    except (OSError, ValueError):
        log.warning("baton report failed (exit %d); the version has no handoff report: %s",
                    proc.returncode, proc.stderr[-2000:])
        return None
