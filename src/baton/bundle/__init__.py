"""Bundles: manifest, reproducible archive, content digest, verified extraction."""

from baton.bundle.archive import build_archive, bundle_digest, extract_archive
from baton.bundle.loader import Bundle, open_bundle
from baton.bundle.manifest import BundleManifest

__all__ = ["Bundle", "BundleManifest", "build_archive", "bundle_digest", "extract_archive",
           "open_bundle"]
