"""The tamper-evident audit log: a hash chain signed with the registry's key.

Every entry carries ``prev_hash`` (the hash of the entry before it), ``hash`` (sha256 over
``prev_hash`` and the canonical JSON of the entry's fields) and ``signature`` (the
registry's Ed25519 key over that hash). Appends are serialised (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock) and take ``id = head + 1``,
so the chain never forks and has no gaps.

Someone who can write to the database but does not hold the key can insert, alter or
delete rows (after dropping the append-only triggers), but cannot sign: :func:`verify_chain`
names the first entry that breaks. Removing the newest entries leaves a valid prefix, so
the registry also keeps a signed *head checkpoint* (last id and hash) in a file next to its
key, rewritten after every commit; verification compares the chain with it, and the
registry refuses to append to a log that is behind or disagrees with it.

Entries written before migration 0005 were chained by that migration but not signed: they
are accepted as an unsigned prefix, protected from then on by the first signed entry's
``prev_hash``.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from baton.errors import AuditChainBroken
from baton.registry.models import AuditEvent
from baton.trust import PublicKey, SigningKey

#: The ``prev_hash`` of the first entry.
GENESIS = ""
HEAD_KIND = "baton-audit-head"
#: PostgreSQL advisory lock key that serialises appends ("baton" in ASCII).
_PG_LOCK = 0x6261746F6E
#: Fields that the hash covers, in the names ``AuditEvent.to_dict`` gives them.
FIELDS = ("id", "time", "actor", "action", "name", "version", "digest", "from", "to",
          "reason", "details")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return b""


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def utc_text(t: dt.datetime) -> str:
    """One spelling of a time whatever the back end returns (SQLite drops the zone,
    PostgreSQL answers in the session's zone)."""
    return _aware(t).astimezone(dt.UTC).isoformat()


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    body = {k: event.get(k) for k in FIELDS}
    body["details"] = body["details"] or {}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def sign_hash(key: SigningKey, hash_: str) -> str:
    return _b64(key.sign(hash_.encode()))


def _signed_by(key: PublicKey, hash_: str, signature: str | None) -> bool:
    return bool(signature) and key.verify(_unb64(str(signature)), hash_.encode())


# -- appending ------------------------------------------------------------------------------

def append(s: Session, key: SigningKey, head_file: Path | None, **fields: Any) -> AuditEvent:
    """Add one chained, signed entry in the session's transaction and flush it.

    ``fields`` are AuditEvent columns (actor, action, name, version, digest, from_stage,
    to_stage, reason, details)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    head = s.execute(select(AuditEvent.id, AuditEvent.hash, AuditEvent.time)
                     .order_by(AuditEvent.id.desc()).limit(1)).first()
    if head_file is not None:
        _check_against_checkpoint(s, head_file, key.public, head.id if head else 0)
    now = dt.datetime.now(dt.UTC)
    if head is not None and _aware(head.time) > now:
        now = _aware(head.time)  # a clock stepped back: the chain's time never does
    event = AuditEvent(id=(head.id + 1) if head else 1, time=now, **fields)
    event.prev_hash = (head.hash or GENESIS) if head else GENESIS
    event.hash = chain_hash(event.prev_hash, event.to_dict())
    event.signature = sign_hash(key, event.hash)
    s.add(event)
    s.flush()
    return event


def _check_against_checkpoint(s: Session, head_file: Path, key: PublicKey,
                              head_id: int) -> None:
    checkpoint = read_checkpoint(head_file, key)
    if checkpoint is None:
        return
    stored = s.scalar(select(AuditEvent.hash).where(AuditEvent.id == checkpoint["id"]))
    if head_id < checkpoint["id"] or stored != checkpoint["hash"]:
        raise AuditChainBroken(
            f"the audit log no longer holds entry {checkpoint['id']} as signed in "
            f"{head_file} (entries were removed or altered); the registry refuses to write "
            "until an operator runs 'baton audit verify'",
            details={"id": checkpoint["id"], "checkpoint": str(head_file)})


# -- the signed head checkpoint ------------------------------------------------------------

def checkpoint_path(key_file: Path) -> Path:
    """Where the head checkpoint of the registry whose key is ``key_file`` lives."""
    return key_file.with_name(key_file.name + ".audit-head.json")


def signed_head(key: SigningKey, head_id: int, hash_: str) -> dict[str, Any]:
    body = {"kind": HEAD_KIND, "id": head_id, "hash": hash_}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "signature": _b64(key.sign(payload)), "key": key.public.key_id}


def check_head(head: Any, key: PublicKey) -> dict[str, Any]:
    """The head ``{"id", "hash"}`` if ``key`` signed it; else AuditChainBroken."""
    try:
        body = {"kind": head["kind"], "id": int(head["id"]), "hash": str(head["hash"])}
        signature = str(head["signature"])
    except (KeyError, TypeError, ValueError):
        raise AuditChainBroken("the audit head checkpoint is malformed",
                               details={"reason": "malformed head"}) from None
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if body["kind"] != HEAD_KIND or not key.verify(_unb64(signature), payload):
        raise AuditChainBroken(
            f"the audit head checkpoint (entry {body['id']}) is not signed by key "
            f"{key.key_id}", details={"id": body["id"], "reason": "bad head signature"})
    return body


def read_checkpoint(path: Path, key: PublicKey) -> dict[str, Any] | None:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        head = json.loads(raw)
    except ValueError:
        head = None
    return check_head(head, key)


def write_checkpoint(path: Path, key: SigningKey, head_id: int, hash_: str) -> None:
    """Move the checkpoint forward to ``head_id`` (never back), atomically, under a lock
    shared by every registry process using this key folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = json.loads(path.read_text())
            if int(current.get("id", 0)) >= head_id:
                return
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            pass
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-head-")
        with os.fdopen(fd, "w") as f:
            json.dump(signed_head(key, head_id, hash_), f)
        os.replace(tmp, path)


# -- verifying -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainReport:
    count: int
    #: Entries written before the chain was signed (migration 0005), at the start.
    unsigned: int
    head_id: int
    head_hash: str


def _broken(entry_id: int, reason: str, message: str) -> AuditChainBroken:
    return AuditChainBroken(f"audit entry {entry_id}: {message}",
                            details={"id": entry_id, "reason": reason})


def verify_chain(events: Iterable[dict[str, Any]], key: PublicKey,
                 head: dict[str, Any] | None = None) -> ChainReport:
    """Walk the chain in id order; raise AuditChainBroken naming the first bad entry.

    ``head``: a signed checkpoint ``{"id", "hash", ...}`` (already checked with
    :func:`check_head`) that the chain must contain."""
    prev: dict[str, Any] | None = None
    count = unsigned = 0
    for e in events:
        _check_entry(e, prev, key, signed_seen=count > unsigned)
        count += 1
        unsigned += not e.get("signature")
        if head is not None and e["id"] == head["id"] and e["hash"] != head["hash"]:
            raise _broken(e["id"], "checkpoint mismatch",
                          "differs from the signed head checkpoint (the newest entries were "
                          "removed and others written in their place)")
        prev = e
    last_id = prev["id"] if prev else 0
    if head is not None and last_id < head["id"]:
        raise _broken(last_id + 1, "removed",
                      f"missing: the log ends at entry {last_id} but the signed head "
                      f"checkpoint is entry {head['id']} (the newest entries were removed)")
    return ChainReport(count, unsigned, last_id, prev["hash"] if prev else GENESIS)


def _parse_time(value: Any) -> dt.datetime:
    try:
        return _aware(dt.datetime.fromisoformat(str(value)))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)


def _check_entry(e: dict[str, Any], prev: dict[str, Any] | None, key: PublicKey,
                 signed_seen: bool) -> None:
    eid = int(e["id"])
    if not e.get("hash"):
        raise _broken(eid, "inserted", "has no hash: it was inserted without the registry")
    if prev is not None and eid != prev["id"] + 1 and (e.get("signature") or signed_seen):
        raise _broken(prev["id"] + 1, "removed",
                      f"missing: ids jump from {prev['id']} to {eid}")
    if chain_hash(e.get("prev_hash") or GENESIS, e) != e["hash"]:
        raise _broken(eid, "altered", "its content does not match its hash (altered)")
    if e.get("signature") or signed_seen:
        if not _signed_by(key, e["hash"], e.get("signature")):
            raise _broken(eid, "bad signature",
                          f"is not signed by the registry key {key.key_id} (inserted or "
                          "altered by someone without the key)")
    expected = prev["hash"] if prev is not None else GENESIS
    if (e.get("prev_hash") or GENESIS) != expected:
        where = f"entry {prev['id']}" if prev is not None else "the start of the log"
        raise _broken(eid, "chain broken",
                      f"does not follow {where}: an entry before it was removed, altered or "
                      "inserted")
    if prev is not None and _parse_time(e["time"]) < _parse_time(prev["time"]):
        raise _broken(eid, "time backwards",
                      f"is dated {e['time']}, before entry {prev['id']} ({prev['time']}): "
                      "back-dated")


def verify_database(s: Session, key: PublicKey, head_file: Path | None) -> ChainReport:
    """Verify the log in the database ``s`` reads (an operator on the registry host)."""
    # The checkpoint first: it is written after each commit, so it never runs ahead of
    # the rows read after it.
    head = read_checkpoint(head_file, key) if head_file is not None else None
    rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id).execution_options(
        yield_per=1000))
    try:
        return verify_chain((row.to_dict() for row in rows), key, head)
    finally:
        rows.close()  # a server-side cursor on PostgreSQL, left mid-way when a check fails


def verify_export(body: Any, key: PublicKey) -> tuple[ChainReport, bool]:
    """Verify ``GET /api/v1/audit``'s answer; and whether it carried a signed head."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise AuditChainBroken("the registry's audit answer has no list of events",
                               details={"reason": "malformed"})
    head = check_head(body["head"], key) if body.get("head") else None
    return verify_chain(body["events"], key, head), head is not None
