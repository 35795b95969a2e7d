"""The bundle manifest, ``baton.toml``: identity, runner, locked environment, contract, samples."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from baton.contract.spec import Contract
from baton.errors import ContractError, ManifestError
from baton.runtime.isolation import LEVELS, Isolation
from baton.runtime.runners import BUILTIN_SKLEARN, RUNNERS

MANIFEST_NAME = "baton.toml"
BUILTIN_METRICS = ("accuracy", "mae", "rmse")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+"
                  r"(\s*;\s*[^;]+)?$")
_PYTHON = re.compile(r"^3\.\d{1,2}$")
_R = re.compile(r"^[1-9]\.\d{1,2}$")
_SECTIONS = {"bundle", "model", "environment", "contract", "samples", "serving", "monitoring",
             "isolation"}
#: Keys each section accepts ([contract] checks its own): a misspelt key is an error, not
#: a silently ignored setting (``requirement = [...]`` would build an empty environment).
_KEYS = {"bundle": {"name", "version", "description", "owner"},
         "model": {"runner", "entrypoint", "artifact", "method"},
         "environment": {"python", "r", "requirements"},
         "samples": {"input", "expected", "tolerance"},
         "serving": {"workers", "timeout", "max_batch_rows"},
         "monitoring": {"reference", "drift_threshold", "metrics"},
         "isolation": {"level", "network", "memory_mb", "cpus", "open_files", "processes"}}


@dataclass(frozen=True)
class ModelSpec:
    """How the runner loads the model: an entrypoint, and for built-ins an artifact."""

    runner: str = "python"
    entrypoint: str = BUILTIN_SKLEARN
    artifact: str | None = None
    method: str = "predict_proba"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runner": self.runner, "entrypoint": self.entrypoint}
        if self.artifact is not None:
            out["artifact"] = self.artifact
        out["method"] = self.method
        return out


@dataclass(frozen=True)
class EnvironmentSpec:
    """The interpreter version and the exact, pinned requirements the model runs with: a
    Python version and Python packages, or (``runner = "r"``) an R version and R packages."""

    python: str
    requirements: tuple[str, ...]
    #: R's ``major.minor`` for an R model ("" for every other runner).
    r: str = ""


@dataclass(frozen=True)
class SamplesSpec:
    input: str
    expected: str
    tolerance: float = 1e-6


@dataclass(frozen=True)
class ServingSpec:
    """Defaults the bundle suggests; a deployment may override them. Left out (0), the
    engine decides: workers from the worker's measured memory, the timeout from the
    bundle's check report (see docs/operations.md)."""

    workers: int = 0
    timeout: float = 0.0
    max_batch_rows: int = 256


@dataclass(frozen=True)
class MonitoringSpec:
    """Drift reference (per-feature distributions of the training sample) and its alarm."""

    reference: str | None = None
    #: Population stability index above which a feature is reported as drifting.
    drift_threshold: float = 0.2
    #: Quality metrics: built-in names (accuracy, mae, rmse) or 'module:function' in the
    #: bundle's code, called as ``fn(y_true, y_pred) -> float`` inside the model's worker.
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class BundleManifest:
    name: str
    version: str
    model: ModelSpec
    environment: EnvironmentSpec
    contract: Contract
    samples: SamplesSpec | None = None
    serving: ServingSpec = field(default_factory=ServingSpec)
    description: str = ""
    owner: str = ""
    monitoring: MonitoringSpec = field(default_factory=MonitoringSpec)
    #: The sandbox and per-worker limits the model asks for (docs/isolation.md).
    isolation: Isolation = field(default_factory=Isolation)

    @classmethod
    def load(cls, bundle_dir: Path) -> BundleManifest:
        path = Path(bundle_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in {bundle_dir}: is this a bundle folder? "
                                "('baton init' creates one)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{MANIFEST_NAME} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleManifest:
        unknown = sorted(set(data) - _SECTIONS)
        if unknown:
            raise ManifestError(f"unknown sections in {MANIFEST_NAME}: {', '.join(unknown)}",
                                details={"fields": unknown})
        _check_keys(data)
        b = _table(data, "bundle")
        name, version = _text(b, "bundle.name"), _text(b, "bundle.version")
        if not _NAME.match(name):
            raise _invalid("bundle.name", "lower-case letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit", name)
        if not _VERSION.match(version):
            raise _invalid("bundle.version", "letters, digits, '.', '_', '+' or '-'", version)
        try:
            contract = Contract.from_dict(_table(data, "contract"))
        except ContractError as exc:
            raise ManifestError(f"[contract] is invalid: {exc}",
                                details={"field": "contract"}) from None
        samples = None
        if "samples" in data:
            s = _table(data, "samples")
            samples = SamplesSpec(_relpath(s, "samples.input"), _relpath(s, "samples.expected"),
                                  _number(s.get("tolerance", 1e-6), "samples.tolerance", lo=0))
        serving = _serving(data.get("serving", {}))
        monitoring = MonitoringSpec()
        if "monitoring" in data:
            mon = _table(data, "monitoring")
            metrics = mon.get("metrics", [])
            bad = [m for m in metrics if not isinstance(m, str) or
                   (m not in BUILTIN_METRICS and not _ENTRYPOINT.match(m))] \
                if isinstance(metrics, list) else [metrics]
            if bad:
                raise _invalid("monitoring.metrics", "a list of built-in metric names ("
                               + ", ".join(BUILTIN_METRICS) + ") or 'module:function'", bad[0])
            monitoring = MonitoringSpec(
                _relpath(mon, "monitoring.reference") if "reference" in mon else None,
                float(_number(mon.get("drift_threshold", 0.2), "monitoring.drift_threshold",
                              lo=0)), tuple(metrics))
        model = _model(_table(data, "model"))
        return cls(name=name, version=version, model=model,
                   environment=_environment(_table(data, "environment"), model.runner),
                   contract=contract,
                   samples=samples, serving=serving,
                   description=str(b.get("description", "")), owner=str(b.get("owner", "")),
                   monitoring=monitoring, isolation=_isolation(data.get("isolation", {})))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bundle": {"name": self.name, "version": self.version,
                       "description": self.description, "owner": self.owner},
            "model": self.model.to_dict(),
            "environment": _environment_dict(self.environment),
            "serving": {k: v for k, v in (("workers", self.serving.workers),
                                          ("timeout", self.serving.timeout),
                                          ("max_batch_rows", self.serving.max_batch_rows))
                        if v},  # 0: left to the engine
        }
        if self.samples:
            out["samples"] = {"input": self.samples.input, "expected": self.samples.expected,
                              "tolerance": self.samples.tolerance}
        if self.monitoring != MonitoringSpec():
            mon: dict[str, Any] = {"drift_threshold": self.monitoring.drift_threshold}
            if self.monitoring.reference is not None:
                mon["reference"] = self.monitoring.reference
            if self.monitoring.metrics:
                mon["metrics"] = list(self.monitoring.metrics)
            out["monitoring"] = mon
        if self.isolation != Isolation():
            out["isolation"] = {k: v for k, v in self.isolation.to_dict().items()
                                if v or k == "level"}
        out["contract"] = self.contract.to_dict()
        return out

    def dumps(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(self.dumps(), encoding="utf-8")
        return path


def _invalid(name: str, expected: str, got: Any) -> ManifestError:
    return ManifestError(f"{MANIFEST_NAME}: {name} must be {expected}, got {got!r}",
                         details={"field": name, "expected": expected, "got": got})


def _check_keys(data: dict[str, Any]) -> None:
    for section, allowed in _KEYS.items():
        table = data.get(section)
        extra = sorted(set(table) - allowed) if isinstance(table, dict) else []
        if extra:
            names = [f"{section}.{k}" for k in extra]
            raise ManifestError(f"unknown fields in {MANIFEST_NAME}: {', '.join(names)} "
                                f"([{section}] takes {', '.join(sorted(allowed))})",
                                details={"field": names[0], "fields": names})


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in data:
        raise ManifestError(f"{MANIFEST_NAME} lacks the [{name}] section",
                            details={"field": name})
    value = data[name]
    if not isinstance(value, dict):
        raise _invalid(name, "a table", value)
    return value


def _text(table: dict[str, Any], dotted: str) -> str:
    key = dotted.rsplit(".", 1)[-1]
    if key not in table:
        raise ManifestError(f"{MANIFEST_NAME} lacks required field {dotted}",
                            details={"field": dotted})
    value = table[key]
    if not isinstance(value, str) or not value:
        raise _invalid(dotted, "a non-empty string", value)
    return value


def _number(value: Any, name: str, *, lo: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < lo:
        raise _invalid(name, f"{'an integer' if integer else 'a number'} >= {lo}", value)
    return value


def _isolation(s: Any) -> Isolation:
    if not isinstance(s, dict):
        raise _invalid("isolation", "a table", s)
    level = s.get("level", "process")
    if level not in LEVELS:
        raise _invalid("isolation.level", " or ".join(f"'{v}'" for v in LEVELS), level)
    network = s.get("network", False)
    if not isinstance(network, bool):
        raise _invalid("isolation.network", "true or false", network)
    return Isolation(
        level=level, network=network,
        memory_mb=_number(s.get("memory_mb", 0), "isolation.memory_mb", lo=0, integer=True),
        cpus=float(_number(s.get("cpus", 0), "isolation.cpus", lo=0)),
        open_files=_number(s.get("open_files", 0), "isolation.open_files", lo=0,
                           integer=True),
        processes=_number(s.get("processes", 0), "isolation.processes", lo=0, integer=True))


def _relpath(table: dict[str, Any], dotted: str) -> str:
    value = _text(table, dotted)
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise _invalid(dotted, "a relative path inside the bundle", value)
    return value


def _model(m: dict[str, Any]) -> ModelSpec:
    runner = m.get("runner", "python")
    kind = RUNNERS.get(runner) if isinstance(runner, str) else None
    if kind is None:
        raise _invalid("model.runner", "one of " + ", ".join(RUNNERS), runner)
    entry = (_text(m, "model.entrypoint") if "entrypoint" in m or kind.default_entrypoint is None
             else kind.default_entrypoint)
    if entry not in kind.builtins and not (kind.custom and re.match(kind.custom_pattern,
                                                                    entry)):
        allowed = [f"'{b}'" for b in kind.builtins] + ([f"'{kind.custom_form}'"] if kind.custom
                                                       else [])
        raise _invalid("model.entrypoint", f"{' or '.join(allowed)} for runner '{runner}'",
                       entry)
    artifact = _relpath(m, "model.artifact") if "artifact" in m else None
    if entry in kind.builtins and artifact is None:
        raise ManifestError(f"{MANIFEST_NAME}: model.artifact is required for {entry}",
                            details={"field": "model.artifact"})
    method = m.get("method", "predict_proba")
    if method not in ("predict", "predict_proba"):
        raise _invalid("model.method", "'predict' or 'predict_proba'", method)
    return ModelSpec(runner, entry, artifact, method)


def _environment_dict(env: EnvironmentSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"r": env.r} if env.r else {"python": env.python}
    out["requirements"] = list(env.requirements)
    return out


def _environment(e: dict[str, Any], runner: str) -> EnvironmentSpec:
    """``python`` for every runner but R's; ``r`` (and no ``python``) for R's."""
    python = r = ""
    if runner == "r":
        r = _text(e, "environment.r")
        if not _R.match(r):
            raise _invalid("environment.r", "R's major.minor version, such as '4.2'", r)
        if "python" in e:
            raise _invalid("environment.python", "absent for runner 'r' (an R model "
                           "names its R version in environment.r)", e["python"])
    else:
        if "r" in e:
            raise _invalid("environment.r", "absent for runner " + repr(runner) +
                           " (environment.r is for runner 'r')", e["r"])
        python = _text(e, "environment.python")
        if not _PYTHON.match(python):
            raise _invalid("environment.python", "a version such as '3.11'", python)
    reqs = e.get("requirements", [])
    if not isinstance(reqs, list) or not all(isinstance(pin, str) for pin in reqs):
        raise _invalid("environment.requirements", "a list of strings", reqs)
    unpinned = [pin for pin in reqs if not _PIN.match(pin.strip())]
    if unpinned:
        raise ManifestError(
            f"{MANIFEST_NAME}: environment.requirements must be exact pins "
            f"(name==version); not pinned: {', '.join(unpinned)}",
            details={"field": "environment.requirements", "unpinned": unpinned})
    return EnvironmentSpec(python, tuple(pin.strip() for pin in reqs), r)


def _serving(s: Any) -> ServingSpec:
    if not isinstance(s, dict):
        raise _invalid("serving", "a table", s)
    d = ServingSpec()
    return ServingSpec(  # given, a value is checked; left out, the engine decides
        workers=_number(s["workers"], "serving.workers", lo=1, integer=True)
        if "workers" in s else d.workers,
        timeout=float(_number(s["timeout"], "serving.timeout", lo=0.001))
        if "timeout" in s else d.timeout,
        max_batch_rows=_number(s.get("max_batch_rows", d.max_batch_rows),
                               "serving.max_batch_rows", lo=1, integer=True))
