"""Deployment files: bundles bound to operational settings and streams, by configuration.

    [[deployments]]
    bundle = "examples/penguins/bundle"   # folder, .baton archive, or NAME@VERSION (registry)
    workers = 2                           # optional: overrides the bundle's default
    timeout = 10.0                        # optional: seconds per batch before a restart

    [deployments.stream]                  # optional
    input = "redis://127.0.0.1:6379/penguins-in"
    output = "redis://127.0.0.1:6379/penguins-out"
    dead_letter = "file://dead/penguins.jsonl"
    group = "penguins"                    # optional (default baton-NAME)
    max_batch = 256                       # optional: records per micro-batch
    in_flight = 3                         # optional: micro-batches read ahead, unacknowledged

A deployment is separate from its bundle, so approving a bundle never rewrites it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.errors import BatonError


class DeploymentError(BatonError):
    code = "INVALID_DEPLOYMENT"
    exit_code = 2


@dataclass(frozen=True)
class StreamSpec:
    input: str
    output: str
    dead_letter: str
    group: str = ""
    max_batch: int = 256
    in_flight: int = 3


@dataclass(frozen=True)
class DeploymentSpec:
    bundle: str
    workers: int | None = None
    timeout: float | None = None
    stream: StreamSpec | None = None


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise DeploymentError(f"{where} has unknown keys: {', '.join(extra)}",
                              details={"field": f"{where}.{extra[0]}"})


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         required: bool = False) -> Any:
    if key not in table:
        if required:
            raise DeploymentError(f"{where}.{key} is required", details={"field": f"{where}.{key}"})
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DeploymentError(f"{where}.{key} has the wrong type: {value!r}",
                              details={"field": f"{where}.{key}"})
    return value


def load_deployments(path: Path) -> list[DeploymentSpec]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeploymentError(f"cannot read deployment file {path}: {exc}") from None
    _only(data, {"deployments"}, "deployment file")
    items = data.get("deployments")
    if not isinstance(items, list) or not items:
        raise DeploymentError(f"{path} needs at least one [[deployments]] table",
                              details={"field": "deployments"})
    out = []
    for i, d in enumerate(items):
        where = f"deployments[{i}]"
        _only(d, {"bundle", "workers", "timeout", "stream"}, where)
        workers = _get(d, "workers", int, where)
        if workers is not None and workers < 1:
            raise DeploymentError(f"{where}.workers must be >= 1",
                                  details={"field": f"{where}.workers"})
        timeout = _get(d, "timeout", (int, float), where)
        stream = None
        if "stream" in d:
            s, sw = d["stream"], f"{where}.stream"
            if not isinstance(s, dict):
                raise DeploymentError(f"{sw} must be a table", details={"field": sw})
            _only(s, {"input", "output", "dead_letter", "group", "max_batch", "in_flight"}, sw)
            sizes = {key: _get(s, key, int, sw) for key in ("max_batch", "in_flight")}
            for key, value in sizes.items():
                if value is not None and value < 1:
                    raise DeploymentError(f"{sw}.{key} must be >= 1",
                                          details={"field": f"{sw}.{key}"})
            stream = StreamSpec(_get(s, "input", str, sw, True), _get(s, "output", str, sw, True),
                                _get(s, "dead_letter", str, sw, True),
                                _get(s, "group", str, sw) or "",
                                sizes["max_batch"] or 256, sizes["in_flight"] or 3)
        out.append(DeploymentSpec(_get(d, "bundle", str, where, True), workers,
                                  float(timeout) if timeout is not None else None, stream))
    return out
