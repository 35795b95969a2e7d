"""The content index of a bundle: its files, their sha256 and modes, and the digest.

The content digest of a bundle is the sha256 of its index: one line per file, sorted by
path, giving the file's sha256, its mode (644 or 755) and its relative path. The index
travels inside the archive as ``BATON-CONTENT``; the same content always gives the same
digest, whatever the machine, the clock or the compressor.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from baton.errors import BundleError, UnsafeArchiveError

INDEX_NAME = "BATON-CONTENT"
ARCHIVE_SUFFIX = ".baton"
_EXCLUDED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ARCHIVE_SUFFIX)
_EXCLUDED_NAMES = {".DS_Store", INDEX_NAME, "check-report.json"}


@dataclass(frozen=True)
class IndexEntry:
    path: str
    sha256: str
    mode: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_files(bundle_dir: Path) -> list[str]:
    """Relative POSIX paths of the files that make up a bundle, sorted."""
    out = []
    for root, dirs, files in os.walk(bundle_dir):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS)
        # os.walk lists a link to a folder among the folders and does not enter it: without
        # this check its files would silently be missing from the bundle.
        files = files + [d for d in dirs if Path(root, d).is_symlink()]
        for name in files:
            if name in _EXCLUDED_NAMES or name.endswith(_EXCLUDED_SUFFIXES):
                continue
            full = Path(root, name)
            rel = full.relative_to(bundle_dir).as_posix()
            if full.is_symlink():
                raise BundleError(f"bundle file {rel} is a symbolic link; bundles hold "
                                  "regular files only", details={"path": rel})
            out.append(rel)
    return sorted(out)


def build_index(bundle_dir: Path) -> list[IndexEntry]:
    entries = []
    for rel in list_files(bundle_dir):
        full = bundle_dir / rel
        mode = 0o755 if os.access(full, os.X_OK) else 0o644
        entries.append(IndexEntry(rel, sha256_file(full), mode))
    return entries


def render_index(entries: list[IndexEntry]) -> bytes:
    return "".join(f"{e.sha256}  {e.mode:o}  {e.path}\n" for e in entries).encode()


def parse_index(data: bytes) -> list[IndexEntry]:
    """The entries of an index, which must be exactly as :func:`render_index` writes them:
    sorted, one line per file, safe relative paths, modes 644 or 755."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise BundleError(f"{INDEX_NAME} is not UTF-8 text") from None
    if lines.pop() != "":
        raise BundleError(f"{INDEX_NAME} line {len(lines) + 1} is malformed: no line end")
    entries = [_parse_line(n, line) for n, line in enumerate(lines, 1)]
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)):
        raise BundleError(f"{INDEX_NAME} is not sorted by path, or lists a path twice")
    folders = {str(p) for path in paths for p in PurePosixPath(path).parents}
    clash = sorted(folders.intersection(paths))
    if clash:  # extracting it would write a file where a folder must be, or the reverse
        raise UnsafeArchiveError(f"{INDEX_NAME} lists {clash[0]!r} as a file and as a folder",
                                 details={"entry": clash[0]})
    return entries


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _parse_line(n: int, line: str) -> IndexEntry:
    try:
        sha, mode, path = line.split("  ", 2)
    except ValueError:
        sha = mode = path = ""
    # Never setuid, setgid or world-writable; never a path that could leave the folder.
    if not _SHA256.fullmatch(sha) or mode not in ("644", "755") or not _clean_path(path):
        raise BundleError(f"{INDEX_NAME} line {n} is malformed", details={"line": n})
    return IndexEntry(path, sha, int(mode, 8))


def _clean_path(path: str) -> bool:
    p = PurePosixPath(path)
    return (p.as_posix() == path and path not in ("", ".") and not p.is_absolute()
            and ".." not in p.parts and "\\" not in path
            and not any(ord(c) < 32 for c in path))


def digest_of_index(index: bytes) -> str:
    return "sha256:" + hashlib.sha256(index).hexdigest()


def bundle_digest(bundle_dir: Path) -> str:
    """The content digest of a bundle folder."""
    return digest_of_index(render_index(build_index(Path(bundle_dir))))


