"""A registry as an engine sees it, signing with a key made in the test.

:class:`SignedSource` implements ``baton.serving.follow.RegistrySource`` (list, show, pull):
the protocol seam between an engine and its registry, not a mock of a component. Its rows
play the registry's database, which the tests edit the way an attacker with database rights
would (:meth:`SignedSource.edit`), while :meth:`SignedSource.act` plays the registry itself:
change a version's state and sign it, with the next audit sequence number.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from baton.bundle.archive import verify_archive
from baton.errors import NotFound
from baton.trust import Decision, SigningKey, generate_signing_key, sign_decision


def new_key(folder: Path, name: str = "signing.key") -> SigningKey:
    return generate_signing_key(folder / name)


class SignedSource:
    def __init__(self, key: SigningKey, approvals_required: int = 1) -> None:
        self.key = key
        self.approvals_required = approvals_required
        self.rows: list[dict[str, Any]] = []
        self.archives: dict[str, Path] = {}
        self.seq = 0
        #: Every decision signed, by ``name@version`` (for replays).
        self.signed: dict[str, list[dict[str, str]]] = {}

    # -- the registry's own actions, signed ----------------------------------------------
    def push(self, name: str, version: str, archive: Path) -> dict[str, Any]:
        digest = verify_archive(archive)
        self.archives[digest] = archive
        row = {"name": name, "version": version, "digest": digest, "stage": "draft",
               "approvals": [], "rejections": []}
        self.rows.append(row)
        self.act(f"{name}@{version}", "push")
        return row

    def act(self, ref: str, action: str, *, stage: str | None = None,
            approve: str | None = None, reject: str | None = None) -> dict[str, str]:
        """Change ``ref``'s state as the registry does, and sign the result."""
        row = self._row(ref)
        if stage == "production":
            for other in self.rows:
                if other is not row and other["name"] == row["name"] \
                        and other["stage"] == "production":
                    other["stage"] = "archived"
                    self._sign(other, "archive")
        if stage is not None:
            row["stage"] = stage
        if approve:
            row["approvals"].append(approve)
        if reject:
            row["rejections"].append(reject)
        return self._sign(row, action)

    def release(self, ref: str) -> None:
        """push -> validated -> staging -> approved -> production, each step signed."""
        self.act(ref, "validate", stage="validated")
        self.act(ref, "promote", stage="staging")
        self.act(ref, "approve", approve="abe")
        self.act(ref, "promote", stage="production")

    def _sign(self, row: dict[str, Any], action: str) -> dict[str, str]:
        self.seq += 1
        decision = Decision(name=row["name"], version=row["version"], digest=row["digest"],
                            stage=row["stage"], approvals=tuple(row["approvals"]),
                            rejections=tuple(row["rejections"]),
                            approvals_required=self.approvals_required, seq=self.seq,
                            action=action)
        row["decision"] = sign_decision(self.key, decision)
        self.signed.setdefault(f"{row['name']}@{row['version']}", []).append(row["decision"])
        return row["decision"]

    # -- what an attacker with database rights does: no signature -------------------------
    def edit(self, ref: str, **fields: Any) -> None:
        self._row(ref).update(fields)

    # -- RegistrySource ----------------------------------------------------------------
    def list(self, name: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(r) for r in self.rows
                if (name is None or r["name"] == name) and (stage is None or r["stage"] == stage)]

    def show(self, ref: str) -> dict[str, Any]:
        return copy.deepcopy(self._row(ref))

    def pull(self, ref: str, dest: Path, *, limits: Any = None) -> tuple[Path, str]:
        row = self._row(ref)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{row['name']}-{row['version']}.baton"
        shutil.copyfile(self.archives[row["digest"]], target)
        return target, row["digest"]

    def _row(self, ref: str) -> dict[str, Any]:
        name, _, rest = ref.partition("@")
        for row in reversed(self.rows):
            if row["name"] == name and rest in ("", row["version"], row["digest"]):
                return row
        raise NotFound(f"no bundle {ref} in the registry", code="BUNDLE_NOT_FOUND")
