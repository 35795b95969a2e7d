"""The R package in r/baton: baton_package() writes a bundle from a fitted R model, with the
real R. One Rscript run packages a classifier and a regression, another tries every refusal;
the tests read what they wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from baton.bundle.manifest import BundleManifest
from tests.conftest import ROOT

INSTALL_R = "R is missing: apt-get install r-base-core r-cran-randomforest " \
            "(scripts/ensure-packages.sh installs them)"

# (a) a random forest on iris, one NA in the sample's Petal.Width; (b) lm on a frame of
# mtcars with a column of each type. Then the values to compare with, one a line.
PACKAGE = textwrap.dedent(r"""
    args <- commandArgs(TRUE)
    library(baton, lib.loc = args[1])
    out <- args[2]
    library(randomForest)

    set.seed(42)
    forest <- randomForest(Species ~ ., data = iris, ntree = 25)
    sample <- iris[c(1, 2, 51, 52, 71, 101, 102, 134), 1:4]
    sample$Petal.Width[2] <- NA
    baton_package(forest, sample, name = "iris", path = file.path(out, "iris"),
                  owner = "data-science@example.com")

    cars <- data.frame(mpg = mtcars$mpg, wt = mtcars$wt, cyl = as.integer(mtcars$cyl),
                       manual = mtcars$am == 1, gear = factor(mtcars$gear),
                       origin = rep(c("import", "domestic \"US\""), 16))
    fit <- lm(mpg ~ wt + cyl + manual + gear + origin, data = cars)
    baton_package(fit, cars[1:6, -1], name = "mpg_lm.2", version = "2024-06-01+b.7",
                  path = file.path(out, "mpg"),
                  description = "Miles per gallon: \"lm\" \\ tab\there\nünïcode ✓")

    cat("RF_DESCRIPTION=", system.file("DESCRIPTION", package = "randomForest"), "\n",
        sep = "")
    cat("FITTED=", paste(sprintf("%.17g", fitted(fit)[1:6]), collapse = ","), "\n", sep = "")
""")

# Each refusal, caught: its case name and the error's message, one a line (newlines in a
# message flattened), and the folder's files afterwards.
REFUSE = textwrap.dedent(r"""
    args <- commandArgs(TRUE)
    library(baton, lib.loc = args[1])
    out <- args[2]
    library(randomForest)
    set.seed(1)
    forest <- randomForest(Species ~ ., data = iris, ntree = 5)
    fit <- lm(mpg ~ wt + hp, data = mtcars)
    try_case <- function(case, expr) {
      msg <- tryCatch({ expr; "NO ERROR" }, error = function(e) conditionMessage(e))
      cat(case, "\t", gsub("\n", " ", msg), "\n", sep = "")
    }
    full <- file.path(out, "full")
    dir.create(full)
    writeLines("mine", file.path(full, "notes.txt"))
    try_case("not_empty", baton_package(forest, iris[1:3, 1:4], "iris", path = full))
    try_case("upper_case", baton_package(forest, iris[1:3, 1:4], "Iris",
                                         path = file.path(out, "a")))
    try_case("leading_dash", baton_package(forest, iris[1:3, 1:4], "-iris",
                                           path = file.path(out, "b")))
    try_case("too_long", baton_package(forest, iris[1:3, 1:4], strrep("a", 65),
                                       path = file.path(out, "c")))
    try_case("no_rows", baton_package(forest, iris[0, 1:4], "iris",
                                      path = file.path(out, "d")))
    dated <- data.frame(wt = mtcars$wt[1:3], hp = mtcars$hp[1:3],
                        when = as.Date("2024-01-01") + 0:2)
    try_case("date", baton_package(fit, dated, "cars", path = file.path(out, "e")))
    listed <- data.frame(wt = mtcars$wt[1:3], hp = mtcars$hp[1:3])
    listed$parts <- list(1, 2:3, "x")
    try_case("list", baton_package(fit, listed, "cars", path = file.path(out, "f")))
    graded <- data.frame(wt = mtcars$wt[1:3], hp = mtcars$hp[1:3])
    graded$grade <- factor(c("lo", "hi", "lo"), levels = c("lo", "hi"), ordered = TRUE)
    try_case("ordered", baton_package(fit, graded, "cars", path = file.path(out, "g")))
    try_case("extra_column", baton_package(fit, mtcars[1:3, c("wt", "hp", "qsec")], "cars",
                                           path = file.path(out, "h")))
    try_case("bad_method", baton_package(fit, mtcars[1:3, c("wt", "hp")], "cars",
                                         path = file.path(out, "i"), method = "score"))
    cat("LEFT=", paste(sort(list.files(out, recursive = TRUE)), collapse = ","), "\n", sep = "")
""")


@pytest.fixture(scope="module")
def r_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """r/baton installed into a library of its own, as a user would (R CMD INSTALL)."""
    assert shutil.which("R") and shutil.which("Rscript"), INSTALL_R
    lib = tmp_path_factory.mktemp("r-library")
    done = subprocess.run(["R", "CMD", "INSTALL", f"--library={lib}", str(ROOT / "r" / "baton")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"R CMD INSTALL r/baton failed:\n{done.stdout}{done.stderr}"
    return lib


def rscript(script: str, lib: Path, out: Path) -> dict[str, str]:
    """Runs the script with the library and the output folder; its KEY=value and
    case<TAB>message lines, by key."""
    path = out / "script.R"
    path.write_text(script, encoding="utf-8")
    done = subprocess.run(["Rscript", "--vanilla", str(path), str(lib), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"Rscript failed:\n{done.stdout}{done.stderr}"
    assert "there is no package called 'randomForest'" not in done.stderr, \
        "randomForest is missing: apt-get install r-cran-randomforest"
    lines: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("\t") if "\t" in line else line.partition("=")
        if sep and key.isidentifier():
            lines[key] = value
    lines["stdout"] = done.stdout
    return lines


@pytest.fixture(scope="module")
def packaged(r_library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bundles")
    return {"out": out, **rscript(PACKAGE, r_library, out)}


def read(bundle: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    manifest = tomllib.loads((bundle / "baton.toml").read_text(encoding="utf-8"))
    samples = manifest["samples"]
    return (manifest, json.loads((bundle / samples["input"]).read_text(encoding="utf-8")),
            json.loads((bundle / samples["expected"]).read_text(encoding="utf-8")))


def test_a_classifier_becomes_a_bundle_with_probabilities(packaged: dict[str, Any]) -> None:
    bundle = packaged["out"] / "iris"
    manifest, inputs, expected = read(bundle)
    assert manifest["bundle"] == {"name": "iris", "version": "1.0.0", "description": "",
                                  "owner": "data-science@example.com"}
    assert manifest["model"] == {"runner": "r", "entrypoint": "builtin:rds",
                                 "artifact": "model/model.rds", "method": "predict_proba"}
    assert (bundle / "model" / "model.rds").read_bytes()[:2] == b"\x1f\x8b"  # saveRDS: gzip
    r_version = subprocess.run(["Rscript", "-e", "cat(R.version$major, R.version$minor)"],
                               capture_output=True, text=True).stdout.split()
    # Pinned to the DESCRIPTION's Version string (4.7-1.1), not packageVersion()'s 4.7.1.1.
    description = Path(packaged["RF_DESCRIPTION"]).read_text(encoding="utf-8")
    version = next(line.split(":", 1)[1].strip() for line in description.splitlines()
                   if line.startswith("Version:"))
    assert manifest["environment"] == {
        "r": f"{r_version[0]}.{r_version[1].split('.')[0]}",
        "requirements": [f"randomForest=={version}"]}
    assert manifest["samples"]["tolerance"] == 1e-06

    contract = manifest["contract"]
    assert (contract["kind"], contract["unknown_fields"]) == ("records", "reject")
    # The NA in Petal.Width makes that field, and only that one, nullable.
    assert contract["inputs"] == [
        {"name": "Sepal.Length", "type": "float"}, {"name": "Sepal.Width", "type": "float"},
        {"name": "Petal.Length", "type": "float"},
        {"name": "Petal.Width", "type": "float", "nullable": True}]
    classes = ["setosa", "versicolor", "virginica"]
    # The row with the NA gets NA outputs from randomForest: outputs nullable.
    assert contract["outputs"] == [
        {"name": "prediction", "type": "string", "nullable": True, "categories": classes},
        *({"name": f"proba_{c}", "type": "float", "nullable": True, "min": 0.0, "max": 1.0}
          for c in classes)]

    assert len(inputs) == len(expected) == 8
    assert inputs[0] == {"Sepal.Length": 5.1, "Sepal.Width": 3.5, "Petal.Length": 1.4,
                         "Petal.Width": 0.2}
    assert inputs[1]["Petal.Width"] is None
    assert expected[1] == {"prediction": None, **{f"proba_{c}": None for c in classes}}
    for record in expected[:1] + expected[2:]:
        probas = [record[f"proba_{c}"] for c in classes]
        assert abs(sum(probas) - 1) < 1e-9 and all(0 <= p <= 1 for p in probas)
        assert record["prediction"] == classes[probas.index(max(probas))]
    assert [r["prediction"] for r in expected[:3]] == ["setosa", None, "versicolor"]
    assert "pins:    randomForest==" in packaged["stdout"]
    # The engine reads the manifest.
    assert BundleManifest.load(bundle).contract.output_names == [
        "prediction", *(f"proba_{c}" for c in classes)]


def test_a_regression_predicts_a_float_and_needs_no_packages(
        packaged: dict[str, Any]) -> None:
    bundle = packaged["out"] / "mpg"
    manifest, inputs, expected = read(bundle)
    assert manifest["bundle"]["name"] == "mpg_lm.2"
    assert manifest["bundle"]["version"] == "2024-06-01+b.7"
    # Quotes, a backslash, a tab, a newline and UTF-8 survive the TOML.
    assert manifest["bundle"]["description"] == \
        "Miles per gallon: \"lm\" \\ tab\there\nünïcode ✓"
    assert manifest["model"]["method"] == "predict"
    assert manifest["environment"]["requirements"] == []  # stats is base R's own
    assert manifest["contract"]["inputs"] == [
        {"name": "wt", "type": "float"}, {"name": "cyl", "type": "integer"},
        {"name": "manual", "type": "boolean"},
        {"name": "gear", "type": "string", "categories": ["3", "4", "5"]},
        {"name": "origin", "type": "string"}]
    assert manifest["contract"]["outputs"] == [{"name": "prediction", "type": "float"}]

    assert inputs[:2] == [
        {"wt": 2.62, "cyl": 6, "manual": True, "gear": "4", "origin": "import"},
        {"wt": 2.875, "cyl": 6, "manual": True, "gear": "4", "origin": 'domestic "US"'}]
    assert len(inputs) == len(expected) == 6
    fitted = [float(v) for v in packaged["FITTED"].split(",")]
    assert [r["prediction"] for r in expected] == pytest.approx(fitted, rel=1e-12)
    assert "pins:    (none)" in packaged["stdout"]
    BundleManifest.load(bundle)


def test_refusals_name_the_problem_and_write_nothing(r_library: Path, tmp_path: Path) -> None:
    said = rscript(REFUSE, r_library, tmp_path)
    assert "exists and is not empty" in said["not_empty"]
    for case, name in (("upper_case", "'Iris'"), ("leading_dash", "'-iris'"),
                       ("too_long", "'" + "a" * 65 + "'")):
        assert f"invalid bundle name {name}" in said[case]
        assert "lower-case letters" in said[case]
    assert "the sample has no rows" in said["no_rows"]
    assert "column 'when' has unsupported type Date" in said["date"]
    assert "column 'parts' has unsupported type list" in said["list"]
    assert "column 'grade' is an ordered factor" in said["ordered"]
    assert "columns the model does not use: qsec" in said["extra_column"]
    assert "method must be \"predict\" or \"predict_proba\"" in said["bad_method"]
    # Nothing written anywhere; the full folder's own file untouched.
    assert said["LEFT"] == "full/notes.txt,script.R"
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine\n"
