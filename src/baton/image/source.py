"""What an image is built from: a bundle folder, a ``.baton`` archive, or ``NAME@VERSION``
pulled from a registry that signed it, verified against that digest before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from baton.bundle.loader import Bundle
from baton.errors import BatonError
from baton.settings import Settings


class BundleSource(NamedTuple):
    bundle: Bundle
    #: How the image came to be, as its ``io.baton.image.source`` label says it: the kind
    #: and the file's name, or the registry's address and the reference (no local path).
    label: str


def open_source(ref: str, settings: Settings, registry: str | None = None) -> BundleSource:
    from baton.serving.opening import open_local

    path = Path(ref)
    if path.exists():
        kind = "folder" if path.is_dir() else "archive"
        return BundleSource(open_local(path, settings), f"{kind}:{path.resolve().name}")
    if registry is None and "@" not in ref:
        raise BatonError(f"no bundle at {ref} (give a folder, a .baton archive, or "
                         "NAME@VERSION with --registry URL)", code="BUNDLE_NOT_FOUND",
                         details={"ref": ref})
    return BundleSource(_pull(ref, settings, registry), f"registry:{registry or ''} {ref}")


def _pull(ref: str, settings: Settings, registry: str | None) -> Bundle:
    """Exactly the digest a signed decision names (staging or production), pulled and
    verified: the same gate ``baton score --registry`` passes."""
    from baton.bundle.archive import ArchiveLimits
    from baton.bundle.loader import open_bundle
    from baton.serving.gate import CANDIDATE
    from baton.serving.opening import open_registry

    client, gate = open_registry(registry, "staging", settings)
    try:
        decision = gate.verify(client.show(ref), CANDIDATE)
        limits = ArchiveLimits.from_settings(settings)
        archive, _ = client.pull(f"{decision.name}@{decision.digest}",
                                 settings.home / "pulls", limits=limits)
        return open_bundle(archive, settings.bundles_dir, expected_digest=decision.digest,
                           limits=limits)
    finally:
        client.close()
