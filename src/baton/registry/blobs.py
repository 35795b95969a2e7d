"""Content storage: bundle archives by digest, written atomically, verified on every read."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from baton.bundle.archive import verify_archive
from baton.errors import BatonError, DigestMismatchError


class BlobCorrupt(BatonError):
    code = "BLOB_CORRUPT"
    http_status = 500


class BlobStore:
    """A folder of ``<sha256 hex>.baton`` files; a blob is never rewritten once stored."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise BatonError(f"not a sha256 digest: {digest!r}", code="INVALID_DIGEST",
                             details={"digest": digest})
        return self.root / hexd[:2] / f"{hexd}.baton"

    def put(self, archive: Path) -> tuple[str, int]:
        """Verify ``archive`` completely and store it; return its digest and size."""
        digest = verify_archive(archive)
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
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
            verify_archive(path, digest)
        except (DigestMismatchError, BatonError) as exc:
            raise BlobCorrupt(f"blob {digest} was altered in storage and will not be served: "
                              f"{exc.message}", details={"digest": digest}) from None
        return path
