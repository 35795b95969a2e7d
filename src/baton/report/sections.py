"""The handoff report's sections that need no running model: identity, contract,
dependencies against the packaging environment, the SBOM summary, the check, the drift
reference and the resources a deployment requests. Each is plain JSON data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from baton import __version__
from baton.bundle.loader import Bundle
from baton.env.builder import Environment
from baton.env.packages import InstalledPackage, normalise
from baton.errors import BatonError

#: ``baton deploy kubernetes``'s defaults, which the report's resources are sized for.
WORKERS, WORKER_THREADS = 1, 1


def identity(bundle: Bundle, source: str, env: Environment) -> dict[str, Any]:
    m = bundle.manifest
    return {"name": m.name, "version": m.version, "digest": bundle.digest,
            "description": m.description, "owner": m.owner, "source": source,
            "runner": m.model.runner, "entrypoint": m.model.entrypoint,
            "method": m.model.method, "environment_key": env.key,
            "isolation": {**m.isolation.to_dict(), "summary": m.isolation.describe()},
            "baton_version": __version__}


def contract(bundle: Bundle) -> dict[str, Any]:
    """The contract as the manifest declares it: fields, types, categories, ranges."""
    return bundle.manifest.contract.to_dict()


def dependencies(bundle: Bundle, env: Environment,
                 packages: list[InstalledPackage]) -> dict[str, Any]:
    """Each pin the data scientist packaged with against what the model's environment
    holds: ``same``, ``differs`` (another version), ``missing``; and packages installed
    that no pin names (``unpinned``)."""
    spec = bundle.manifest.environment
    have = {p.name: p.version for p in packages}
    rows, pinned = [], set()
    for pin in spec.requirements:
        name, _, version = pin.split(";")[0].partition("==")
        key = name.strip() if spec.r else normalise(name.split("[")[0].strip())
        pinned.add(key)
        got = have.get(key)
        status = "missing" if got is None else "same" if got == version.strip() else "differs"
        rows.append({"name": key, "pinned": version.strip(), "installed": got,
                     "status": status})
    rows += [{"name": p.name, "pinned": None, "installed": p.version, "status": "unpinned"}
             for p in packages if p.name not in pinned]
    language, packaged = ("r", spec.r) if spec.r else ("python", spec.python)
    found = _r_version() if spec.r else _python_version(env)
    return {language: {"packaged": packaged, "environment": found,
                       "status": "same" if found.startswith(packaged + ".") or
                       found == packaged else "differs"},
            "packages": rows,
            "differences": [r for r in rows if r["status"] != "same"]}


def _python_version(env: Environment) -> str:
    """The environment's interpreter version, from its ``pyvenv.cfg`` (no process)."""
    try:
        for line in (env.path / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return value.strip()
    except OSError:
        pass
    return "unknown"


def _r_version() -> str:
    from baton.env.r import r_installation

    return r_installation()[1]


def sbom(packages: list[InstalledPackage]) -> dict[str, Any]:
    """What an SBOM of the model's environment lists, summarised: every package URL."""
    return {"format": "package URLs (pkg:pypi, pkg:cran) of the model's environment",
            "count": len(packages),
            "components": [{"name": p.name, "version": p.version, "purl": p.purl}
                           for p in packages]}


def check_section(report: dict[str, Any]) -> dict[str, Any]:
    """The ``baton check`` report as the handoff shows it (its log left out)."""
    return {k: report.get(k) for k in ("passed", "failed_stage", "error", "exit_code",
                                       "stages", "measurements", "sample_mismatches")}


def load_check_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BatonError(f"cannot read the check report {path}: {exc}",
                         code="INVALID_CHECK_REPORT", details={"path": str(path)}) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise BatonError(f"{path} is not a 'baton check' report (no stages)",
                         code="INVALID_CHECK_REPORT", details={"path": str(path)})
    return data


def drift_reference(bundle: Bundle) -> dict[str, Any] | None:
    """The reference profile's histograms (bins and shares per feature), or None."""
    ref = bundle.manifest.monitoring.reference
    if ref is None:
        return None
    try:
        profile = json.loads((bundle.path / ref).read_text())
    except (OSError, ValueError) as exc:
        raise BatonError(f"cannot read the drift reference {ref}: {exc}",
                         code="INVALID_REFERENCE", details={"path": ref}) from None
    features = {}
    for name, f in profile.get("features", {}).items():
        keep = {k: f[k] for k in ("kind", "missing", "edges", "proportions") if k in f}
        features[name] = keep
    return {"rows": profile.get("rows"), "threshold": bundle.manifest.monitoring.drift_threshold,
            "features": features}


def resources(check_report: dict[str, Any], ident: dict[str, Any],
              memory: list[dict[str, Any]], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``baton deploy kubernetes`` requests for this bundle with its defaults (one
    worker of one thread), by the same rule from the same check (:mod:`baton.deploy.sizing`),
    beside what this report measured: the worker's peak memory and its busiest CPU."""
    from baton.deploy.sizing import provenance, size_pod
    from baton.deploy.source import CheckFigures, Identity

    measured = {"measured_peak_worker_mb": max((m["peak_rss_mb"] for m in memory),
                                               default=0.0),
                "measured_worker_cpu_cores": max((c["worker_cpu_cores"] for c in grid),
                                                 default=0.0)}
    try:
        figures = CheckFigures.from_report(check_report, "the check", Identity(
            ident["name"], ident["version"], ident["digest"], ident["source"]))
    except BatonError as exc:
        return {**measured, "note": f"not sized: {exc.message}"}
    sizing = size_pod(figures, WORKERS, WORKER_THREADS)
    rules = provenance(figures, WORKERS, WORKER_THREADS)
    return {**measured, "workers": WORKERS, "worker_threads": WORKER_THREADS,
            **sizing.resources(), "startup_probe_seconds": sizing.startup_seconds,
            "rule": f"memory: {rules['baton.io/memory']}; CPU: {rules['baton.io/cpu']}"}
