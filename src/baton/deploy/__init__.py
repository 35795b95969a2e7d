"""``baton deploy``: manifests for the orchestrator IT runs, sized from ``baton check``.

:func:`kubernetes_spec` turns a reference into a :class:`KubernetesSpec`:

* a BUNDLE (folder or archive) gives the name, version and digest; the image is ``--image``
  or the local ``localhost/baton/NAME:VERSION`` that ``baton image`` built (refused when
  absent); the figures come from ``--check-report`` or a check run now;
* an IMAGE (anything that is not a path) is inspected with podman: its labels give the
  bundle's identity, its user the pod's, its volumes the writable paths; the figures come
  from ``--check-report``, which must be the check of the image's digest.

:func:`write_manifests` writes them. Nothing here talks to a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from baton.deploy.kubernetes import DeployOptions, KubernetesSpec, object_name
from baton.deploy.output import write_manifests
from baton.deploy.sizing import provenance, size_pod
from baton.deploy.source import (
    CheckFigures,
    DeployError,
    Identity,
    ImageInfo,
    check_data,
    inspect_image,
)

if TYPE_CHECKING:
    from baton.settings import Settings

__all__ = ["DeployError", "DeployOptions", "KubernetesSpec", "kubernetes_spec",
           "write_manifests"]


def kubernetes_spec(ref: str, options: DeployOptions, settings: Settings) -> KubernetesSpec:
    """The manifests' spec for ``ref`` (a bundle path or an image reference)."""
    if options.min_replicas < 1 or options.max_replicas < options.min_replicas:
        raise DeployError(f"replicas must be 1 <= min ({options.min_replicas}) <= max "
                          f"({options.max_replicas})", code="INVALID_REPLICAS")
    if Path(ref).exists():
        identity, info = _from_bundle(ref, options, settings)
    else:
        info = inspect_image(ref)
        identity = info.identity()
    # a name Kubernetes refuses is refused before a check runs or a file is written
    object_name(options.name, identity.name, options.registry, options.stage)
    figures = _figures(ref, identity, options, settings)
    return KubernetesSpec(
        identity=identity, image=options.image or info.ref,
        sizing=size_pod(figures, options.workers, options.worker_threads),
        provenance=provenance(figures, options.workers, options.worker_threads),
        options=options, image_info=info)


def _from_bundle(ref: str, options: DeployOptions,
                 settings: Settings) -> tuple[Identity, ImageInfo]:
    from baton.serving.opening import open_local

    bundle = open_local(ref, settings)
    identity = Identity.of_bundle(bundle)
    if options.image:  # the image IT pulls from its own registry: nothing to inspect here
        return identity, ImageInfo(ref=options.image)
    from baton.image.build import default_tag
    from baton.image.podman import image_exists

    local = default_tag(bundle)
    if not image_exists(local):
        raise DeployError(f"no image for {identity.name} {identity.version}: build it with "
                          f"'baton image {ref}' (it makes {local}), or name the image the "
                          "cluster pulls with --image REF", code="NO_IMAGE",
                          details={"image": local})
    info = inspect_image(local)
    if (found := info.identity()).digest != identity.digest:
        raise DeployError(f"image {local} holds {found.digest}, not this bundle's "
                          f"{identity.digest}: rebuild it with 'baton image {ref}'",
                          code="IMAGE_MISMATCH", details={"image": local})
    return identity, info


def _figures(ref: str, identity: Identity, options: DeployOptions,
             settings: Settings) -> CheckFigures:
    if options.check_report is None and not Path(ref).exists():
        raise DeployError(f"no check report for image {ref}: pass --check-report FILE (the "
                          "'baton check' report of the bundle in the image)",
                          code="NO_CHECK_REPORT", details={"image": ref})
    data, where = check_data(ref, options.check_report, settings)
    return CheckFigures.from_report(data, where, identity)
