"""A registry version as the handoff report's source: its archive (pulled and verified
against its digest), the check the registry ran on it, its approvals and audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from baton.bundle.archive import ArchiveLimits
from baton.registry.reports import registry_record

if TYPE_CHECKING:
    from baton.registry.client import RegistryClient


class RegistryVersion(NamedTuple):
    archive: Path
    #: The registry's own ``baton check`` report of this digest (None before validation).
    check_report: dict[str, Any] | None
    #: The report's ``registry`` section: url, stage, author, approvals, audit events.
    record: dict[str, Any]


def pull_version(client: RegistryClient, ref: str, dest: Path,
                 limits: ArchiveLimits) -> RegistryVersion:
    """Pull ``ref`` (NAME@VERSION or NAME@sha256:…) into ``dest`` with its record."""
    info = client.show(ref)
    archive, _ = client.pull(f"{info['name']}@{info['digest']}", dest, limits=limits)
    record = {"url": client.url, **registry_record(info, client.history(info["name"]))}
    return RegistryVersion(archive, info.get("check_report"), record)


class StoredReport(NamedTuple):
    summary: str
    #: The page's address on the registry (read scope).
    link: str


def stored_report(client: RegistryClient, ref: str) -> StoredReport | None:
    """The summary line and link of the report the registry keeps for ``ref``; None when
    it keeps none (a version not validated yet, or validated before reports existed)."""
    import httpx

    paths = client.show(ref).get("report")
    if not paths:
        return None
    try:
        resp = client.http.get(paths["json"].removeprefix("/api/v1"))
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return StoredReport(str(resp.json().get("summary", "")), client.url + paths["html"])
