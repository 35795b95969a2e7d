"""Manifests on disk: one YAML file per object and a kustomization.yaml listing them.

The same spec always writes the same bytes (keys in a fixed order, no timestamps), so the
manifests can be committed and reviewed as a diff. KServe's objects go into ``kserve/``,
a kustomization of its own (with its own copy of the settings ConfigMap, since kustomize
refuses files outside a kustomization's folder): a cluster without KServe applies the folder,
one with KServe may apply ``kserve/`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from baton.deploy import yaml
from baton.deploy.kubernetes import KubernetesSpec, Object, config_map, core_objects
from baton.deploy.operators import inference_service, service_monitor, serving_runtime


def file_name(obj: Object) -> str:
    return f"{obj['kind'].lower()}.yaml"


def kustomization(objects: list[Object]) -> Object:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [file_name(o) for o in objects]}


def manifest_sets(spec: KubernetesSpec) -> dict[str, list[Object]]:
    """Folder (relative to the output) -> the objects written there."""
    core = core_objects(spec)
    if spec.options.service_monitor:
        core.append(service_monitor(spec))
    sets = {"": core}
    if spec.options.kserve:
        sets["kserve"] = [config_map(spec), serving_runtime(spec), inference_service(spec)]
    return sets


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader never sees half a manifest


def write_manifests(spec: KubernetesSpec, out: Path) -> list[Path]:
    """Write every manifest of ``spec`` under ``out``; the paths written, in order."""
    written = []
    for folder, objects in manifest_sets(spec).items():
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            _write(target / file_name(obj), yaml.dump(obj))
            written.append(target / file_name(obj))
        _write(target / "kustomization.yaml", yaml.dump(kustomization(objects)))
        written.append(target / "kustomization.yaml")
    return written
