"""The packages installed in an environment, as an SBOM and a handoff report list them.

The environment's own interpreter is asked (``importlib.metadata`` over its ``sys.path``),
so the answer is what that environment imports, whatever installed it (uv, pip, a Debian
package): no pip is needed inside it, and Baton's own packages never leak into a model's
list. Names are normalised as PEP 503 does, which is also how a package URL spells them.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from baton.errors import EnvironmentBuildError

# Runs inside the environment's interpreter: standard library only, any Python >= 3.8.
_LIST = """
import importlib.metadata as m, json, sys
seen = {}
for d in m.distributions():
    name = d.metadata["Name"]
    if name and name not in seen:
        seen[name] = d.version
json.dump(sorted(seen.items()), sys.stdout)
"""


@dataclass(frozen=True, order=True)
class InstalledPackage:
    """One installed distribution: its normalised name, exact version and package URL."""

    name: str
    version: str
    #: ``pypi``, or ``cran`` for an R package (its name as R spells it).
    ecosystem: str = "pypi"

    @property
    def purl(self) -> str:
        """The package URL (``pkg:pypi/scikit-learn@1.5.2``, ``pkg:cran/randomForest@4.7-1.1``)
        an SBOM identifies it by."""
        return f"pkg:{self.ecosystem}/{self.name}@{quote(self.version, safe='.+!-_')}"


def normalise(name: str) -> str:
    """``Foo_Bar.baz`` -> ``foo-bar-baz`` (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(python: Path) -> list[InstalledPackage]:
    """Every distribution the interpreter ``python`` can import, sorted by name.

    ``python`` is an environment's ``bin/python`` (``Environment.python``). Raises
    :class:`EnvironmentBuildError` (``ENVIRONMENT_BUILD_FAILED``) when it cannot be run.
    """
    try:
        proc = subprocess.run([str(python), "-I", "-c", _LIST], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EnvironmentBuildError(f"cannot list the packages of {python}: {err}",
                                    details={"python": str(python)}) from err
    if proc.returncode != 0:
        raise EnvironmentBuildError(
            f"cannot list the packages of {python}: {proc.stderr.strip()[-500:]}",
            details={"python": str(python), "output": proc.stderr})
    found = {normalise(name): version for name, version in json.loads(proc.stdout)}
    return sorted(InstalledPackage(n, v) for n, v in found.items())
