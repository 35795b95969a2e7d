"""The local token file: engine tokens for engines without a registry (``--tokens FILE``).

The file is TOML, one ``[[token]]`` table per token::

    [[token]]
    name = "checkout-app"
    sha256 = "9f86d0…"             # of the token, never the token itself
    scopes = ["infer"]
    created = 2025-06-01T09:00:00Z
    expires = 2025-08-30T09:00:00Z  # optional
    revoked = true                  # optional

It holds no secret: a token is shown once by ``baton engine-tokens add`` and only its
SHA-256 is kept. An engine re-reads the file when it changes (at most once a second), so
an operator revokes a token by editing the file, without a restart; a file that turns
malformed while the engine runs leaves the last good one in force (the error is logged).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from baton.errors import SettingsError
from baton.scopes import SCOPES

log = logging.getLogger("baton.server.auth")

#: Local engine tokens start with this, registry tokens with ``bt_``: an engine never asks
#: the registry about a token that cannot be one of its own.
TOKEN_PREFIX = "bte_"
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEADER = re.compile(r"^\s*\[\[\s*token\s*\]\]", re.MULTILINE)
_FIELDS = {"name", "sha256", "scopes", "created", "expires", "revoked"}
#: Seconds between two looks at the file's modification time (the hot path never stats).
RELOAD_SECONDS = 1.0


class TokensFileError(SettingsError):
    """The token file cannot be read or has an invalid entry (exit 2)."""

    code = "INVALID_TOKENS_FILE"


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    scopes: frozenset[str]
    created: dt.datetime
    expires: dt.datetime | None = None
    revoked: bool = False
    #: ``expires`` as a Unix time, for a cheap comparison on every request.
    expires_at: float = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expires_at",
                           self.expires.timestamp() if self.expires else float("inf"))

    def state(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        return "expired" if (now or time.time()) >= self.expires_at else "active"

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256,
                               "scopes": sorted(self.scopes), "created": self.created}
        if self.expires is not None:
            out["expires"] = self.expires
        if self.revoked:
            out["revoked"] = True
        return out


def hash_token(token: str | bytes) -> str:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str, path: Path) -> list[TokenEntry]:
    """Every entry of a token file, checked; a precise TokensFileError otherwise."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"token file {path} is not valid TOML: {exc}",
                              details={"file": str(path), "reason": str(exc)}) from None
    extra = sorted(set(doc) - {"token"})
    if extra:
        raise _invalid(path, None, extra[0], "is not a token file key (only [[token]] "
                       "tables)")
    tables = doc.get("token", [])
    if not isinstance(tables, list):
        raise _invalid(path, None, "token", "must be [[token]] tables")
    lines = [text.count("\n", 0, m.start()) + 1 for m in _HEADER.finditer(text)]
    entries: list[TokenEntry] = []
    for i, table in enumerate(tables):
        where = (i + 1, lines[i] if i < len(lines) else None)
        entries.append(_entry(table, path, where))
    _check_unique(entries, path, lines)
    return entries


def _entry(table: Any, path: Path, where: tuple[int, int | None]) -> TokenEntry:
    if not isinstance(table, dict):
        raise _invalid(path, where, "token", "must be a table")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise _invalid(path, where, unknown[0],
                       f"is not a token field ({', '.join(sorted(_FIELDS))})")
    for key in ("name", "sha256", "scopes", "created"):
        if key not in table:
            raise _invalid(path, where, key, "is missing")
    name, digest, scopes = table["name"], table["sha256"], table["scopes"]
    if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
        raise _invalid(path, where, "name", "must be 1-100 letters, digits, '.', '_', '@' or "
                       "'-', starting with a letter or digit")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise _invalid(path, where, "sha256", "must be 64 lower-case hex digits (the SHA-256 "
                       "of the token)")
    if (not isinstance(scopes, list) or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)):
        raise _invalid(path, where, "scopes", f"must be a non-empty list of {', '.join(SCOPES)}")
    created = _when(table["created"], path, where, "created")
    expires = _when(table["expires"], path, where, "expires") if "expires" in table else None
    revoked = table.get("revoked", False)
    if not isinstance(revoked, bool):
        raise _invalid(path, where, "revoked", "must be true or false")
    return TokenEntry(name, digest, frozenset(scopes), created, expires, revoked)


def _when(value: Any, path: Path, where: tuple[int, int | None], key: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise _invalid(path, where, key, "must be a TOML date-time such as "
                       "2025-06-01T09:00:00Z")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _check_unique(entries: list[TokenEntry], path: Path, lines: list[int]) -> None:
    names: set[str] = set()
    digests: set[str] = set()
    for i, e in enumerate(entries):
        where = (i + 1, lines[i] if i < len(lines) else None)
        if e.name.lower() in names:
            raise _invalid(path, where, "name", f"{e.name!r} is used by an earlier token "
                           "(names are unique, whatever their case)")
        if e.sha256 in digests:
            raise _invalid(path, where, "sha256", "is the same as an earlier token's")
        names.add(e.name.lower())
        digests.add(e.sha256)


def _invalid(path: Path, where: tuple[int, int | None] | None, key: str,
             reason: str) -> TokensFileError:
    at = ""
    details: dict[str, Any] = {"file": str(path), "field": key, "reason": reason}
    if where is not None:
        number, line = where
        at = f" token #{number}" + (f" (line {line})" if line else "") + ","
        details["token"] = number
        if line:
            details["line"] = line
    return TokensFileError(f"token file {path}:{at} field {key!r} {reason}", details=details)


def read_tokens(path: Path) -> list[TokenEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"cannot read token file {path}: {exc}",
                              details={"file": str(path), "reason": str(exc)}) from None
    return parse_tokens(text, path)


def write_tokens(path: Path, entries: list[TokenEntry]) -> None:
    """Replace the file atomically (readers see the old or the new one), mode 0600."""
    body = tomli_w.dumps({"token": [e.to_toml() for e in entries]})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# Baton engine tokens: managed by 'baton engine-tokens' (see docs/http.md)\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise ``baton engine-tokens`` commands on one file (no lost update)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class TokenFile:
    """The engine's view of a token file: loaded at start (a bad file stops the engine),
    then re-read when its modification time, size or inode changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_digest: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._next_look = 0.0

    def load(self) -> TokenFile:
        stamp = self._look()
        self._install(read_tokens(self.path), stamp)
        try:
            if os.stat(self.path).st_mode & 0o022:
                log.warning("token file %s is writable by others than its owner: whoever "
                            "can write it can grant themselves a token (chmod 600 it)",
                            self.path)
        except OSError:
            pass
        return self

    def lookup(self, digest: str) -> TokenEntry | None:
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + RELOAD_SECONDS
            self._refresh()
        return self.by_digest.get(digest)

    def _look(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        stamp = self._look()
        if stamp == self._stamp:
            return
        try:
            entries = read_tokens(self.path)
        except TokensFileError as exc:
            self._stamp = stamp  # log once per change, not once a second
            log.error("%s; the last good token file stays in force", exc.message)
            return
        self._install(entries, stamp)
        log.info("token file %s re-read: %d tokens", self.path, len(entries))

    def _install(self, entries: list[TokenEntry], stamp: tuple[int, int, int] | None) -> None:
        self.by_digest = {e.sha256: e for e in entries}
        self._stamp = stamp
