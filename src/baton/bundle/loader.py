"""Open a bundle from a folder or a verified archive.

An archive is verified completely every time it is opened, and its files are used from an
extraction cache, ``BUNDLES_DIR/<hex digest>``, only if that folder holds exactly what the
index lists (checked strictly, file by file, every time). A cache that does not match is
never used and never an error: it is extracted again from the genuine archive, in the same
pass that verifies it, and swapped in.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from baton.bundle.archive import ArchiveLimits, stream_archive
from baton.bundle.index import IndexEntry, bundle_digest, sha256_file
from baton.bundle.manifest import BundleManifest
from baton.errors import BundleError, DigestMismatchError

log = logging.getLogger("baton.bundle")


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its folder, its parsed manifest and its content digest."""

    path: Path
    manifest: BundleManifest
    digest: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def open_bundle(ref: str | Path, bundles_dir: Path, expected_digest: str | None = None, *,
                limits: ArchiveLimits | None = None) -> Bundle:
    """A folder is read in place; an archive is verified completely (within ``limits``) and
    its files used from the extraction cache under ``bundles_dir``."""
    path = Path(ref)
    if path.is_dir():
        manifest = BundleManifest.load(path)
        digest = bundle_digest(path)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(f"bundle digest is {digest}, expected {expected_digest}",
                                      details={"expected": expected_digest, "actual": digest})
        return Bundle(path.resolve(), manifest, digest)
    if not path.is_file():
        raise BundleError(f"no bundle at {ref}: expected a bundle folder or a .baton archive",
                          code="BUNDLE_NOT_FOUND")
    target, digest = _CachedCopy(bundles_dir).open(path, expected_digest, limits)
    return Bundle(target, BundleManifest.load(target), digest)

class _CachedCopy:
    """One opening of an archive against the extraction cache."""

    def __init__(self, bundles_dir: Path) -> None:
        self.bundles_dir = bundles_dir
        self.tmp: Path | None = None
        self.problems: list[str] = []

    def open(self, archive: Path, expected_digest: str | None,
             limits: ArchiveLimits | None) -> tuple[Path, str]:
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        try:
            digest = stream_archive(archive, self._destination, expected_digest, limits)
            target = self.bundles_dir / digest.split(":", 1)[1]
            if self.tmp is not None:
                self._publish(digest, self.tmp, target)
        finally:
            if self.tmp is not None:
                _remove(self.tmp)
        return target, digest

    def _destination(self, digest: str, index: dict[str, IndexEntry]) -> Path | None:
        """Verify only when the cache matches the index; otherwise extract afresh."""
        target = self.bundles_dir / digest.split(":", 1)[1]
        if os.path.lexists(target):
            self.problems = cache_problems(target, index)
            if not self.problems:
                return None
        self.tmp = Path(tempfile.mkdtemp(dir=self.bundles_dir, prefix=f".{target.name}-"))
        return self.tmp

    def _publish(self, digest: str, tmp: Path, target: Path) -> None:
        _make_read_only(tmp)
        if self.problems:
            log.warning("the extracted copy of %s in %s did not match its archive (%s); "
                        "extracting it again", digest, target, "; ".join(self.problems))
        stale = None
        if os.path.lexists(target):
            stale = target.with_name(f".{target.name}-stale-{uuid.uuid4().hex[:8]}")
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
            self.tmp = None
        except OSError:
            pass  # another process published the same verified content a moment ago
        if stale is not None:
            _remove(stale)


def cache_problems(folder: Path, index: dict[str, IndexEntry]) -> list[str]:
    """What differs between ``folder`` and the index (empty: it matches exactly).

    Strict on purpose: every entry counts, including names a bundle folder's own index
    skips (``__pycache__``, ``.DS_Store``, hidden files), and each file must be a regular
    file with one link, the cache's read-only mode and the indexed content.
    """
    if folder.is_symlink() or not folder.is_dir():
        return [f"{folder.name} is not a folder"]
    folders = {str(p) for rel in index for p in PurePosixPath(rel).parents} - {"."}
    problems, found = [], []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            full = Path(root, name)
            rel = full.relative_to(folder).as_posix()
            problem = _entry_problem(full, rel, index, folders)
            if problem:
                problems.append(f"{rel}: {problem}")
            elif rel in index:
                found.append(rel)
        dirs[:] = [d for d in dirs if Path(root, d).relative_to(folder).as_posix() in folders
                   and not Path(root, d).is_symlink()]
    problems += [f"{rel}: missing" for rel in sorted(set(index) - set(found))
                 if not any(p.startswith(f"{rel}:") for p in problems)]
    if problems:
        return problems
    for rel in found:  # the content last: only when everything else matched
        if sha256_file(folder / rel) != index[rel].sha256:
            return [f"{rel}: content differs"]
    return []


def _entry_problem(full: Path, rel: str, index: dict[str, IndexEntry],
                   folders: set[str]) -> str | None:
    st = os.lstat(full)
    if stat.S_ISDIR(st.st_mode):
        return None if rel in folders else "a folder the bundle does not have"
    if not stat.S_ISREG(st.st_mode):
        return "a link or special file"
    if rel not in index:
        return "not in the bundle"
    if st.st_nlink != 1:
        return "has other hard links"
    if stat.S_IMODE(st.st_mode) != _read_only(index[rel].mode):
        return f"mode {stat.S_IMODE(st.st_mode):o}, expected {_read_only(index[rel].mode):o}"
    return None


def _read_only(mode: int) -> int:
    return 0o555 if mode & 0o111 else 0o444


def _make_read_only(folder: Path) -> None:
    """Files 0444 (0555 if executable), folders 0555: an accident cannot change the copy
    silently (and it is verified at every open anyway)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            p = Path(root, name)
            p.chmod(_read_only(p.stat().st_mode))
        for name in dirs:
            Path(root, name).chmod(0o555)
    folder.chmod(0o555)


def _remove(path: Path) -> None:
    """Remove a folder this module wrote (read-only) or a link planted in its place."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for root, dirs, _ in os.walk(path):
        for name in [".", *dirs]:
            p = Path(root, name)
            if not p.is_symlink():
                p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)
