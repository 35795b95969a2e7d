"""Content storage: bundle archives by digest, written atomically, verified on every read."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from baton.bundle.archive import ArchiveLimits, ArchiveTooLarge, verify_archive
from baton.errors import BatonError

_BLOB_NAME = re.compile(r"([0-9a-f]{64})\.baton")
_UPLOAD_PREFIX = ".put-"


class BlobCorrupt(BatonError):
    code = "BLOB_CORRUPT"
    http_status = 500


class BlobStore:
    """A folder of ``<sha256 hex>.baton`` files; a blob is never rewritten once stored.

    Every archive is verified completely, within ``limits`` (default: ArchiveLimits'), when
    it is stored and every time it is read back.
    """

    def __init__(self, root: Path, limits: ArchiveLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or ArchiveLimits()

    def path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise BatonError(f"not a sha256 digest: {digest!r}", code="INVALID_DIGEST",
                             details={"digest": digest})
        return self.root / hexd[:2] / f"{hexd}.baton"

    def put(self, archive: Path) -> tuple[str, int]:
        """Verify ``archive`` completely and store it; return its digest and size."""
        digest = verify_archive(archive, limits=self.limits)
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_UPLOAD_PREFIX)
            os.close(fd)
            try:
                shutil.copyfile(archive, tmp)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return digest, target.stat().st_size

    def open_verified(self, digest: str) -> Path:
        """The stored archive for ``digest``, after checking it was not altered in storage."""
        path = self.path(digest)
        if not path.is_file():
            raise BlobCorrupt(f"blob {digest} is missing from storage", details={"digest": digest})
        try:
            verify_archive(path, digest, limits=self.limits)
        except ArchiveTooLarge:
            raise  # names the limit and the setting that lets it through
        except BatonError as exc:
            raise BlobCorrupt(f"blob {digest} was altered in storage and will not be served: "
                              f"{exc.message}", details={"digest": digest}) from None
        return path

    def delete(self, digest: str) -> bool:
        """Remove the blob for ``digest``; whether there was one."""
        path = self.path(digest)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed

    def collect_garbage(self, referenced: set[str], *, dry_run: bool = False,
                        grace_seconds: float = 3600) -> list[Path]:
        """Remove blobs whose digest is not in ``referenced``, and uploads (``.put-*``)
        untouched for ``grace_seconds`` (younger ones may still be in progress); return what
        was (with ``dry_run``: would be) removed. Other files are left alone.

        The caller must keep pushes from recording new references meanwhile (the registry
        holds its content lock)."""
        stale_before = time.time() - grace_seconds
        garbage = [p for shard in self._shards() for p in sorted(shard.iterdir())
                   if self._is_garbage(p, referenced, stale_before)]
        if not dry_run:
            for p in garbage:
                p.unlink(missing_ok=True)
        return garbage

    def _shards(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and re.fullmatch(r"[0-9a-f]{2}",
                                                                            p.name))

    @staticmethod
    def _is_garbage(path: Path, referenced: set[str], stale_before: float) -> bool:
        if path.is_symlink() or not path.is_file():
            return False
        blob = _BLOB_NAME.fullmatch(path.name)
        if blob is not None:
            return blob.group(1)[:2] == path.parent.name and \
                f"sha256:{blob.group(1)}" not in referenced
        return path.name.startswith(_UPLOAD_PREFIX) and path.stat().st_mtime < stale_before
