"""An R model's library, built with the real R: exactly its pins, from a folder of package
files or from the system's R packages, never from a network repository; complete, versioned,
and checked again every time it is used."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from baton.bundle.manifest import EnvironmentSpec
from baton.env.builder import EnvBuilder
from baton.env.r import description, packages, r_installation
from baton.errors import EnvironmentBuildError


@pytest.fixture(scope="module")
def rscript() -> Path:
    found = shutil.which("Rscript")
    assert found, "R is missing: apt-get install r-base-core r-cran-randomforest " \
                  "(scripts/ensure-packages.sh installs them)"
    return Path(found)


def system_version(name: str) -> str:
    """The version of ``name`` among the system's R packages (Debian's r-cran-*)."""
    for lib in r_installation()[2]:
        if (lib / name / "DESCRIPTION").is_file():
            return description((lib / name / "DESCRIPTION").read_text())["Version"]
    raise AssertionError(f"no {name} among the system's R packages: apt-get install "
                         f"r-cran-{name.lower()}")


def r_major_minor() -> str:
    return r_installation()[1].rsplit(".", 1)[0]


def source_package(folder: Path, name: str, version: str, imports: str = "") -> Path:
    """A small R source package, built with ``R CMD build`` into ``folder``."""
    src = folder / "src" / name
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text(
        f"Package: {name}\nVersion: {version}\nTitle: Test\nDescription: A test.\n"
        "License: MIT\nAuthor: Baton\nMaintainer: Baton <baton@example.com>\n"
        + (f"Imports: {imports}\n" if imports else ""))
    (src / "NAMESPACE").write_text(f"export({name}_answer)\n" +
                                   (f"importFrom({imports}, {imports}_answer)\n"
                                    if imports else ""))
    body = f"{imports}_answer() + 1" if imports else "41"
    (src / "R" / "answer.R").write_text(f"{name}_answer <- function() {body}\n")
    subprocess.run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(src)],
                   cwd=folder, check=True, capture_output=True, timeout=120)
    built = folder / f"{name}_{version}.tar.gz"
    assert built.is_file()
    return built


def test_a_library_from_the_systems_r_packages_holds_exactly_the_pins(
        rscript: Path, tmp_path: Path) -> None:
    version = system_version("randomForest")
    spec = EnvironmentSpec("", (f"randomForest=={version}",), r_major_minor())
    env = EnvBuilder(tmp_path / "envs").ensure(spec)
    assert (env.language, env.cached, env.interpreter) == ("r", False, rscript)
    library = env.path / "library"
    assert sorted(p.name for p in library.iterdir()) == ["randomForest"]
    assert env.variables["R_LIBS_SITE"] == env.variables["R_LIBS_USER"] == str(library)
    # The model's R sees its own library, then R's base packages, and nothing of the
    # system's site library (which also holds jsonlite).
    out = subprocess.run(
        [str(rscript), "--vanilla", "-e", "writeLines(.libPaths()); "
         "cat(requireNamespace('jsonlite', quietly = TRUE), "
         "as.character(packageVersion('randomForest')), '\\n')"],
        env={"PATH": "/usr/bin:/bin", **env.variables}, capture_output=True, text=True,
        check=True).stdout.split()
    assert out[0] == str(library) and out[-2:] == ["FALSE", version.replace("-", ".")]
    # What a report and an SBOM list: the R packages, by their CRAN package URLs.
    assert [p.purl for p in packages(library)] == [f"pkg:cran/randomForest@{version}"]
    again = EnvBuilder(tmp_path / "envs").ensure(spec)
    assert (again.cached, again.path) == (True, env.path)


def test_a_pin_the_machine_cannot_meet_is_named_with_what_it_has(
        rscript: Path, tmp_path: Path) -> None:
    have = system_version("randomForest")
    spec = EnvironmentSpec("", ("randomForest==0.0-1", "notapackage==1.0"), r_major_minor())
    with pytest.raises(EnvironmentBuildError) as info:
        EnvBuilder(tmp_path / "envs").ensure(spec)
    err = info.value
    assert err.details["stage"] == "dependency_resolution"
    reasons = {f["requirement"]: f["reason"] for f in err.details["failures"]}
    assert have in reasons["randomForest==0.0-1"]
    assert "have none" in reasons["notapackage==1.0"]
    assert "BATON_R_PACKAGES" in err.message
    assert not list((tmp_path / "envs").glob("r-*"))  # nothing half-built is left


def test_another_r_version_is_refused(rscript: Path, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentBuildError) as info:
        EnvBuilder(tmp_path / "envs").ensure(EnvironmentSpec("", (), "3.6"))
    assert info.value.details["stage"] == "interpreter"
    assert f"needs R 3.6, and this machine has R {r_installation()[1]}" in info.value.message


def test_package_files_install_in_dependency_order_and_the_lock_must_be_complete(
        rscript: Path, tmp_path: Path) -> None:
    files = tmp_path / "r-packages"
    files.mkdir()
    source_package(files, "basepkg", "1.2.3")
    source_package(files, "toppkg", "0.1.0", imports="basepkg")
    builder = EnvBuilder(tmp_path / "envs", r_packages=files)
    incomplete = EnvironmentSpec("", ("toppkg==0.1.0",), r_major_minor())
    with pytest.raises(EnvironmentBuildError) as info:
        builder.ensure(incomplete)
    assert "toppkg needs basepkg, which environment.requirements does not pin" \
        in info.value.message
    # Listed dependent first: installed dependency first all the same.
    env = builder.ensure(EnvironmentSpec("", ("toppkg==0.1.0", "basepkg==1.2.3"),
                                         r_major_minor()))
    out = subprocess.run([str(rscript), "--vanilla", "-e", "cat(toppkg::toppkg_answer())"],
                         env={"PATH": "/usr/bin:/bin", **env.variables}, capture_output=True,
                         text=True, check=True)
    assert out.stdout == "42"
    # A library whose package changed under it (an upgrade, a hand edit) is refused when
    # used: baton check's dependency stage proves the versions every time.
    desc = env.path / "library" / "basepkg" / "DESCRIPTION"
    desc.write_text(desc.read_text().replace("Version: 1.2.3", "Version: 1.2.4"))
    with pytest.raises(EnvironmentBuildError, match=r"basepkg==1\.2\.3: the library has 1\.2\.4"):
        builder.ensure(EnvironmentSpec("", ("toppkg==0.1.0", "basepkg==1.2.3"),
                                       r_major_minor()))
