"""An R model's library: exactly its pinned R packages, in a folder of its own.

R has no virtual environments; a library folder on ``.libPaths()`` is R's equivalent. A
bundle with ``runner = "r"`` pins every R package it needs (``randomForest==4.7-1.1``) and
its worker runs the system's R with that library alone in front of R's own base packages
(``R_LIBS``, ``R_LIBS_SITE`` and ``R_LIBS_USER`` all point at it). Each pinned package is
installed, at that exact version, from:

1. the operator's folder of package files (``BATON_R_PACKAGES``: ``name_version.tar.gz``,
   sources or binaries, for air-gapped machines), with ``R CMD INSTALL``;
2. else the system's R libraries (Debian's ``r-cran-*`` packages), copied.

Never from a network repository. The library must be complete (every package's Depends and
Imports pinned too), it is keyed by R's version and the pins and cached like a Python
environment, and its versions are read again from each package's DESCRIPTION every time it
is used: ``baton check``'s dependency stage fails when one differs from its pin.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from baton.bundle.manifest import EnvironmentSpec
from baton.env.builder import Environment, publish
from baton.env.packages import InstalledPackage
from baton.errors import EnvironmentBuildError

_READY = ".baton-ready"
#: R's own packages (Priority: base): always there, never pinned.
BASE = frozenset({"R", "base", "compiler", "datasets", "graphics", "grDevices", "grid",
                  "methods", "parallel", "splines", "stats", "stats4", "tcltk", "tools",
                  "utils"})
#: The variables that put a library on R's path; the engine's own are replaced.
_LIB_VARIABLES = ("R_LIBS", "R_LIBS_SITE", "R_LIBS_USER")
_INSTALL = "apt-get install r-base-core (R 4.2 on Debian 12)"
#: R's rules (Writing R Extensions, 1.1.1): a package's name is letters, digits and '.',
#: starts with a letter and does not end with '.'; its version is two or more integers
#: joined by '.' or '-'. The manifest's pins are Python's (extras, markers): an R pin is
#: held to these before its name or version becomes a path or a glob pattern.
_R_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]")
_R_VERSION = re.compile(r"[0-9]+(?:[.-][0-9]+)+")


@functools.cache
def r_installation() -> tuple[Path, str, tuple[Path, ...]]:
    """``Rscript``, R's full version and the system's libraries (its ``.libPaths()``)."""
    found = shutil.which("Rscript")
    if found is None:
        raise EnvironmentBuildError(
            f"runner 'r' needs R, and no Rscript is on PATH: {_INSTALL}",
            details={"stage": "interpreter", "failures": [
                {"requirement": "R", "reason": "Rscript not found on PATH"}]})
    env = {k: v for k, v in os.environ.items() if k not in _LIB_VARIABLES}
    proc = subprocess.run(
        [found, "--vanilla", "-e", 'cat(R.version$major, ".", R.version$minor, "\\n", sep = "");'
         " writeLines(.libPaths())"], capture_output=True, text=True, env=env,
        stdin=subprocess.DEVNULL, timeout=60)
    lines = proc.stdout.split()
    if proc.returncode != 0 or not lines:
        raise EnvironmentBuildError(f"{found} does not run: {proc.stderr.strip()[-500:]}",
                                    details={"stage": "interpreter", "output": proc.stderr})
    return Path(found), lines[0], tuple(Path(p) for p in lines[1:])


def description(text: str) -> dict[str, str]:
    """A DESCRIPTION file (Debian control format: ``Key: value``, continuation lines
    indented)."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def needs(fields: dict[str, str], *, linking: bool = False) -> set[str]:
    """The packages a DESCRIPTION depends on (``Depends``, ``Imports``; and ``LinkingTo``,
    which a source install needs), without versions and without R's own."""
    names = set()
    for key in ("Depends", "Imports") + (("LinkingTo",) if linking else ()):
        for item in fields.get(key, "").split(","):
            name = item.split("(")[0].strip()
            if name and name not in BASE:
                names.add(name)
    return names


def installed(library: Path) -> dict[str, str]:
    """Every package in ``library``: name -> the Version its DESCRIPTION says."""
    found = {}
    for desc in sorted(library.glob("*/DESCRIPTION")):
        fields = description(desc.read_text(encoding="utf-8", errors="replace"))
        if "Package" in fields and "Version" in fields:
            found[fields["Package"]] = fields["Version"]
    return found


def packages(library: Path) -> list[InstalledPackage]:
    """The library's packages as an SBOM lists them (``pkg:cran/...``)."""
    return [InstalledPackage(n, v, "cran") for n, v in sorted(installed(library).items())]


def r_key(spec: EnvironmentSpec) -> str:
    """The cache key: R's version and the sorted pins (R's package names are
    case-sensitive, so they are kept as they are)."""
    text = f"r={spec.r}\n" + "\n".join(sorted(p.replace(" ", "") for p in spec.requirements))
    return "r-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def pins(spec: EnvironmentSpec) -> dict[str, str]:
    """name -> version of each pin; an error naming every pin that is not an R package's
    name and version (``pkg[extra]==1.0``, ``pkg==1.0; python_version>"3"``, ``pkg==1.*``)."""
    found, bad = {}, []
    for pin in spec.requirements:
        name, _, version = (part.strip() for part in pin.partition("=="))
        if _R_NAME.fullmatch(name) and _R_VERSION.fullmatch(version):
            found[name] = version
        else:
            bad.append(pin)
    if bad:
        raise EnvironmentBuildError(
            "environment.requirements: not R package pins (name==version, a name of letters, "
            "digits and '.', a version such as 4.7-1.1, no extras or markers): "
            + ", ".join(repr(b) for b in bad),
            details={"stage": "dependency_resolution", "field": "environment.requirements",
                     "failures": [{"requirement": b, "reason": "not an R package pin"}
                                  for b in bad]})
    return found


class RLibraryBuilder:
    """Builds and caches R libraries under ``envs_dir``, from ``packages`` (a folder of
    package files) and the system's R libraries."""

    def __init__(self, envs_dir: Path, packages: Path | None = None) -> None:
        self.envs_dir = Path(envs_dir)
        self.packages = packages

    def ensure(self, spec: EnvironmentSpec) -> Environment:
        pins(spec)  # before any pin becomes a path or a pattern
        rscript, version, _ = r_installation()
        if version.rsplit(".", 1)[0] != spec.r and version != spec.r:
            raise EnvironmentBuildError(
                f"this bundle needs R {spec.r}, and this machine has R {version} ({rscript})",
                details={"stage": "interpreter", "failures": [
                    {"requirement": f"R {spec.r}", "reason": f"R {version} is installed"}]})
        key = r_key(spec)
        final = self.envs_dir / key
        if not (final / _READY).exists():
            self.envs_dir.mkdir(parents=True, exist_ok=True)
            with open(self.envs_dir / f".{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key, across processes
                if not (final / _READY).exists():
                    started = time.perf_counter()
                    self._build(spec, final)
                    return self._environment(spec, final, key, time.perf_counter() - started)
        return self._environment(spec, final, key, None)

    def _environment(self, spec: EnvironmentSpec, final: Path, key: str,
                     seconds: float | None) -> Environment:
        library = final / "library"
        _verify(spec, library)
        rscript = r_installation()[0]
        lib = str(library)
        return Environment(final, key, seconds or 0.0, seconds is None, language="r",
                           program=rscript,
                           variables={**dict.fromkeys(_LIB_VARIABLES, lib),
                                      "BATON_R_LIBRARY": lib})

    def _build(self, spec: EnvironmentSpec, final: Path) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.envs_dir, prefix=".build-"))
        try:
            library = tmp / "env" / "library"
            library.mkdir(parents=True)
            files, copies = self._sources(spec)
            _complete({**{p: _tar_description(p) for p in files},
                       **{f: description((f / "DESCRIPTION").read_text(errors="replace"))
                          for f in copies}}.values(), library)
            for folder in copies:
                shutil.copytree(folder, library / folder.name, symlinks=True)
            for path in _install_order(files):
                self._install(path, library, spec)
            _verify(spec, library)
            publish(tmp / "env", final, spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _sources(self, spec: EnvironmentSpec) -> tuple[list[Path], list[Path]]:
        """Each pin's package file (from ``packages``) or installed folder (from the
        system's libraries); every pin that has neither is a failure, all named at once."""
        files, copies, failures = [], [], []
        system = r_installation()[2]
        for name, version in pins(spec).items():
            if self.packages is not None:
                hits = sorted(self.packages.glob(f"{name}_{version}.tar.gz")) + sorted(
                    self.packages.glob(f"{name}_{version}_R_*.tar.gz"))
                if hits:
                    files.append(hits[0])
                    continue
            found = {}
            for lib in system:
                desc = lib / name / "DESCRIPTION"
                if desc.is_file():
                    found[lib / name] = description(desc.read_text(errors="replace")).get(
                        "Version", "?")
            same = [folder for folder, v in found.items() if v == version]
            if same:
                copies.append(same[0])
                continue
            where = [f"{v} in {folder.parent}" for folder, v in found.items()]
            places = ([f"{self.packages} (BATON_R_PACKAGES) has no {name}_{version}.tar.gz"]
                      if self.packages is not None else [])
            places.append("the system's R libraries have " + (", ".join(where) or "none"))
            failures.append({"requirement": f"{name}=={version}",
                             "reason": "; ".join(places)})
        if failures:
            listing = "; ".join(f"{f['requirement']} ({f['reason']})" for f in failures)
            raise EnvironmentBuildError(
                f"R packages not available at their pinned versions: {listing}. Put the "
                "package files in BATON_R_PACKAGES, or install the matching r-cran-* "
                "packages", details={"stage": "dependency_resolution", "failures": failures})
        return files, copies

    def _install(self, path: Path, library: Path, spec: EnvironmentSpec) -> None:
        rscript = r_installation()[0]
        env = {k: v for k, v in os.environ.items() if k not in _LIB_VARIABLES}
        env.update(dict.fromkeys(_LIB_VARIABLES, str(library)))
        proc = subprocess.run([str(rscript.parent / "R"), "CMD", "INSTALL", "--no-docs",
                               "--no-html", f"--library={library}", str(path)],
                              capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=1800)
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            raise EnvironmentBuildError(
                f"R CMD INSTALL {path.name} failed: {output[-800:]}",
                details={"stage": "dependency_resolution", "output": output, "failures": [
                    {"requirement": path.name, "reason": output[-800:]}]})


def _install_order(files: list[Path]) -> list[Path]:
    """Package files ordered so that each one's dependencies (among them) come first."""
    wanted: dict[str, tuple[Path, set[str]]] = {}
    for path in files:
        fields = _tar_description(path)
        wanted[fields.get("Package", path.name)] = (path, needs(fields, linking=True))
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in done or name not in wanted or name in seen:
            return
        for dep in sorted(wanted[name][1]):
            visit(dep, (*seen, name))
        done.add(name)
        order.append(wanted[name][0])

    for name in sorted(wanted):
        visit(name, ())
    return order


def _tar_description(path: Path) -> dict[str, str]:
    try:
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers()
                           if m.name.count("/") == 1 and m.name.endswith("/DESCRIPTION")),
                          None)
            data = tar.extractfile(member) if member is not None else None
            return description(data.read().decode(errors="replace")) if data else {}
    except (OSError, tarfile.TarError) as err:
        raise EnvironmentBuildError(f"{path} is not an R package file: {err}",
                                    details={"stage": "dependency_resolution"}) from err


def _verify(spec: EnvironmentSpec, library: Path) -> None:
    """The library holds exactly the pins, at their versions, and nothing a pinned package
    needs is missing from it."""
    have = installed(library)
    failures = []
    for name, version in pins(spec).items():
        got = have.get(name)
        if got != version:
            failures.append({"requirement": f"{name}=={version}",
                             "reason": f"the library has {got}" if got else "not installed"})
    if failures:
        _fail("the R library of this bundle does not match its pins", failures, library)
    _complete([description((library / n / "DESCRIPTION").read_text(errors="replace"))
               for n in have], library)


def _complete(descriptions: Iterable[dict[str, str]], library: Path) -> None:
    """Every package the ``descriptions`` need is among them: the pins are a whole lock."""
    descriptions = list(descriptions)
    names = {d.get("Package", "") for d in descriptions}
    failures = [{"requirement": dep, "reason": f"{d.get('Package')} needs {dep}, which "
                 "environment.requirements does not pin"}
                for d in descriptions for dep in sorted(needs(d) - names)]
    if failures:
        _fail("the pinned R packages are not a complete lock", failures, library)


def _fail(what: str, failures: list[dict[str, str]], library: Path) -> NoReturn:
    listing = "; ".join(f"{f['requirement']}: {f['reason']}" for f in failures)
    raise EnvironmentBuildError(f"{what}: {listing}", details={
        "stage": "dependency_resolution", "failures": failures, "library": str(library)})
