"""Open a bundle from a folder or a verified archive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from baton.bundle.archive import bundle_digest, extract_archive, read_archive_digest
from baton.bundle.manifest import BundleManifest
from baton.errors import BundleError, DigestMismatchError


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


def open_bundle(ref: str | Path, bundles_dir: Path, expected_digest: str | None = None) -> Bundle:
    """A folder is read in place; an archive is verified and extracted once per digest."""
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
    digest = read_archive_digest(path)
    if expected_digest is not None and digest != expected_digest:
        raise DigestMismatchError(f"archive digest is {digest}, expected {expected_digest}",
                                  details={"expected": expected_digest, "actual": digest})
    target = bundles_dir / digest.split(":", 1)[1]
    bundles_dir.mkdir(parents=True, exist_ok=True)
    if not target.is_dir():
        extract_archive(path, target, digest)
    elif bundle_digest(target) != digest:
        raise DigestMismatchError(f"the extracted copy of {digest} in {target} was altered",
                                  details={"path": str(target)})
    return Bundle(target, BundleManifest.load(target), digest)
