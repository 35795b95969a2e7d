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

    [deployments.labels]                  # optional: true values, joined to logged predictions
    input = "redis://127.0.0.1:6379/penguins-labels"
    dead_letter = "file://dead/penguins-labels.jsonl"
    group = "penguins-labels"             # optional (default baton-NAME-labels)
    max_batch = 256                       # optional: labels per micro-batch

A deployment is separate from its bundle, so approving a bundle never rewrites it.

An :class:`EngineSpec` is everything an engine serves, already parsed and checked: its
deployments, where a registry source comes in, a canary or shadow candidate, and the stream
and labels bindings of its one model. ``baton serve`` only turns its options into one;
:func:`baton.serving.assembly.build_engine` builds the engine from it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.errors import BatonError, SettingsError


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
class LabelsSpec:
    """Where a model's true values come from, and where labels that cannot be attached go."""

    input: str
    dead_letter: str
    group: str = ""
    max_batch: int = 256


@dataclass(frozen=True)
class DeploymentSpec:
    """One model to serve: a bundle folder, an archive or, from a registry, NAME@VERSION."""

    bundle: str
    workers: int | None = None
    timeout: float | None = None
    stream: StreamSpec | None = None
    labels: LabelsSpec | None = None


@dataclass(frozen=True)
class CanarySpec:
    """Send ``weight`` (0..1) of a model's unversioned requests to the candidate ``ref``."""

    ref: str
    weight: float

    def __post_init__(self) -> None:
        if not self.ref or not 0 <= self.weight <= 1:
            raise _canary_error(f"{self.ref}={self.weight * 100:g}")


@dataclass(frozen=True)
class ShadowSpec:
    """Mirror a model's traffic to the candidate ``ref``; compare, never answer with it."""

    ref: str


@dataclass(frozen=True)
class RegistrySpec:
    """Serve from a registry: ``url`` (None: the saved login), the ``stage`` this engine
    serves (its policy), and the seconds between checks."""

    url: str | None
    stage: str = "production"
    poll: float = 2.0


@dataclass(frozen=True)
class EngineSpec:
    """What an engine serves, besides its settings. ``stream`` and ``labels`` bind the one
    model it serves; several models carry their own bindings in their deployments. With a
    ``registry`` and no deployments, the engine follows the registry's stage."""

    deployments: tuple[DeploymentSpec, ...] = ()
    registry: RegistrySpec | None = None
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None
    stream: StreamSpec | None = None
    labels: LabelsSpec | None = None


def parse_canary(value: str) -> CanarySpec:
    """``REF=PERCENT`` (``baton serve --canary``) as a :class:`CanarySpec`."""
    ref, _, percent = value.rpartition("=")
    try:
        weight = float(percent) / 100
    except ValueError:
        weight = -1.0
    if not ref or not 0 <= weight <= 1:
        raise _canary_error(value)
    return CanarySpec(ref, weight)


def _canary_error(value: str) -> SettingsError:
    return SettingsError(f"--canary takes REF=PERCENT with PERCENT in 0..100, got {value!r}",
                         details={"field": "canary", "value": value})


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
        _only(d, {"bundle", "workers", "timeout", "stream", "labels"}, where)
        workers = _get(d, "workers", int, where)
        if workers is not None and workers < 1:
            raise DeploymentError(f"{where}.workers must be >= 1",
                                  details={"field": f"{where}.workers"})
        timeout = _get(d, "timeout", (int, float), where)
        stream = labels = None
        if "stream" in d:
            s, sw = _table(d, "stream", where)
            _only(s, {"input", "output", "dead_letter", "group", "max_batch", "in_flight"}, sw)
            sizes = _sizes(s, ("max_batch", "in_flight"), sw)
            stream = StreamSpec(_get(s, "input", str, sw, True), _get(s, "output", str, sw, True),
                                _get(s, "dead_letter", str, sw, True),
                                _get(s, "group", str, sw) or "",
                                sizes["max_batch"] or 256, sizes["in_flight"] or 3)
        if "labels" in d:
            t, lw = _table(d, "labels", where)
            _only(t, {"input", "dead_letter", "group", "max_batch"}, lw)
            labels = LabelsSpec(_get(t, "input", str, lw, True),
                                _get(t, "dead_letter", str, lw, True),
                                _get(t, "group", str, lw) or "",
                                _sizes(t, ("max_batch",), lw)["max_batch"] or 256)
        out.append(DeploymentSpec(_get(d, "bundle", str, where, True), workers,
                                  float(timeout) if timeout is not None else None, stream,
                                  labels))
    return out


def _table(d: dict[str, Any], key: str, where: str) -> tuple[dict[str, Any], str]:
    table, at = d[key], f"{where}.{key}"
    if not isinstance(table, dict):
        raise DeploymentError(f"{at} must be a table", details={"field": at})
    return table, at


def _sizes(table: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, int | None]:
    """Optional integer sizes, each at least 1."""
    sizes = {key: _get(table, key, int, where) for key in keys}
    for key, value in sizes.items():
        if value is not None and value < 1:
            raise DeploymentError(f"{where}.{key} must be >= 1",
                                  details={"field": f"{where}.{key}"})
    return sizes
