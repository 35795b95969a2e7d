"""A CycloneDX 1.5 SBOM of an image: every package in it, read from the image itself.

The inventory runs inside the built image (``baton.image.inventory``, no network): the
engine's venv and each model environment are asked through their own interpreters, the
Debian base through dpkg. Each component says which of the three it belongs to
(``baton:environment``), so the same wheel in the engine and the model appears twice, once
for each place it is installed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from baton import __version__
from baton.env.packages import InstalledPackage
from baton.image.layout import VENV
from baton.image.podman import podman

SPEC_VERSION = "1.5"
DEBIAN_DISTRO = "debian-12"


def image_inventory(tag: str) -> dict[str, list[list[str]]]:
    """What ``baton.image.inventory`` finds inside ``tag``."""
    out = podman(["run", "--rm", "--network", "none", "--read-only", "--cap-drop", "all",
                  "--entrypoint", f"{VENV}/bin/python", tag, "-m", "baton.image.inventory"],
                 what="listing the image's packages")
    data: dict[str, list[list[str]]] = json.loads(out)
    return data


def sbom(tag: str, labels: dict[str, str], inventory: dict[str, list[list[str]]]
         ) -> dict[str, Any]:
    components = []
    for scope, packages in sorted(inventory.items()):
        for package in packages:
            purl = _deb_purl(*package) if scope == "debian" else InstalledPackage(*package[:2]).purl
            components.append({
                "type": "library", "bom-ref": f"{scope}|{purl}", "name": package[0],
                "version": package[1], "purl": purl,
                "properties": [{"name": "baton:environment", "value": scope}]})
    return {
        "bomFormat": "CycloneDX", "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "baton",
                                      "version": __version__}]},
            "component": {
                "type": "container", "bom-ref": tag, "name": tag,
                "version": labels.get("io.baton.bundle.version", ""),
                "properties": [{"name": k, "value": v} for k, v in sorted(labels.items())]}},
        "components": components,
    }


def write_sbom(tag: str, labels: dict[str, str], target: Path) -> int:
    """Write the SBOM of ``tag`` to ``target``; the number of components in it."""
    document = sbom(tag, labels, image_inventory(tag))
    target.write_text(json.dumps(document, indent=2) + "\n")
    return len(document["components"])


def _deb_purl(name: str, version: str, arch: str = "") -> str:
    qualifiers = f"?arch={arch}&distro={DEBIAN_DISTRO}" if arch else f"?distro={DEBIAN_DISTRO}"
    return f"pkg:deb/debian/{quote(name, safe='.+-_')}@{quote(version, safe='.+~-_')}" \
        + qualifiers
