"""Listing an environment's packages: what an SBOM and the handoff report are built from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from baton.env.packages import InstalledPackage, installed, normalise
from baton.errors import EnvironmentBuildError


def test_installed_lists_the_running_environment_with_exact_versions() -> None:
    from importlib.metadata import version

    found = {p.name: p for p in installed(Path(sys.executable))}
    assert found["click"].version == version("click")
    assert found["click"].purl == f"pkg:pypi/click@{version('click')}"
    assert list(found) == sorted(found)


def test_names_are_normalised_as_pep_503_and_package_urls_spell_them() -> None:
    assert normalise("Typing_Extensions") == "typing-extensions"
    assert InstalledPackage(normalise("scikit_learn"), "1.5.2").purl == \
        "pkg:pypi/scikit-learn@1.5.2"


def test_an_interpreter_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentBuildError, match="cannot list the packages"):
        installed(tmp_path / "missing" / "python")
