"""runner.R against hostile or sloppy input and models: strings that test its hand-written
JSON reader and writer, values R cannot hold, and models that return nothing. Each case runs
the real runner under the engine's own :class:`~baton.runtime.worker.Worker` and ``Rscript``;
a refusal is an answer naming the input (or output) and the reason, and the worker serves on.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from baton.batch import Batch
from baton.errors import ModelError
from baton.runtime.runners import R
from baton.runtime.worker import Worker, WorkerSpec

MODELS = """
echo <- function(newdata) list(prediction = newdata$s)
count <- function(newdata) list(prediction = as.character(newdata$n))
nothing <- function(newdata) NULL
garbled <- function(newdata) list(prediction = c("fine", rawToChar(as.raw(c(0x61, 0xff)))))
latin1 <- function(newdata) {
  x <- rawToChar(as.raw(c(0x63, 0x61, 0x66, 0xe9)))
  Encoding(x) <- "latin1"
  list(prediction = c(x, rawToChar(as.raw(c(0x63, 0x61, 0x66, 0xc3, 0xa9)))))
}
"""
#: Strings that a JSON reader or writer gets wrong when it mishandles escapes or encodings.
AWKWARD = ['say "hi"', "back\\slash", "\\", '\\"', "\\u0041", "new\nline\r\n", "tab\t",
           "ctl\x01\x1b\x1f\x7f", "é日本語", "😀 and 𝄞", "\u2028\u2029", "", None,
           "x" * 200_000]


def spec(tmp: Path, function: str, field: dict[str, Any]) -> WorkerSpec:
    rscript = shutil.which("Rscript")
    assert rscript is not None, "R is missing: apt-get install r-base-core"
    (tmp / "models.R").write_text(MODELS)
    return WorkerSpec(
        model=function, python=Path(rscript), bundle_dir=tmp, runner=R, load_timeout=60,
        load={"model": {"runner": "r", "entrypoint": f"models.R:{function}",
                        "method": "predict"},
              "kind": "records", "inputs": [field["name"]], "outputs": ["prediction"],
              "fields": [field]})


def serve(worker_spec: WorkerSpec, body: Callable[[Worker], Awaitable[None]]) -> None:
    async def run() -> None:
        worker = Worker(worker_spec, 0)
        await worker.start()
        assert worker.state == "ready", worker.last_output
        try:
            await body(worker)
        finally:
            await worker.stop(grace=10)
    uvloop.run(asyncio.wait_for(run(), 120))


def test_awkward_strings_come_back_exactly(tmp_path: Path) -> None:
    async def body(worker: Worker) -> None:
        got = await worker.predict(Batch({"s": list(AWKWARD)}, len(AWKWARD)), 60)
        assert list(got.columns["prediction"]) == AWKWARD
    serve(spec(tmp_path, "echo", {"name": "s", "type": "string", "nullable": True}), body)


def test_a_string_with_nul_is_refused_not_cut(tmp_path: Path) -> None:
    """R's strings cannot hold U+0000: "a\\0b" reached the model as "ab"."""
    async def body(worker: Worker) -> None:
        with pytest.raises(ModelError, match=r"input 's' record 1: the string holds the "
                                             r"character U\+0000"):
            await worker.predict(Batch({"s": ["fine", "a\x00b", "c"]}, 3), 30)
        got = await worker.predict(Batch({"s": ["\\u0000", "\\\\u0000"]}, 2), 30)
        assert list(got.columns["prediction"]) == ["\\u0000", "\\\\u0000"]  # text, not NUL
    serve(spec(tmp_path, "echo", {"name": "s", "type": "string"}), body)


def test_an_integer_r_cannot_hold_exactly_is_refused(tmp_path: Path) -> None:
    """Past 2^53 a double is not exact: 2^53 + 1 reached the model as 2^53."""
    async def body(worker: Worker) -> None:
        for column in (np.array([1, 2**53 + 1], dtype=np.int64), [1, -(2**60)]):
            with pytest.raises(ModelError, match=r"input 'n' record 1: the integer .* is past "
                                                 r"2\^53 - 1"):
                await worker.predict(Batch({"n": column}, 2), 30)
        got = await worker.predict(Batch({"n": np.array([2**53 - 1, -7], np.int64)}, 2), 30)
        assert list(got.columns["prediction"]) == ["9007199254740991", "-7"]
    serve(spec(tmp_path, "count", {"name": "n", "type": "integer"}), body)


def test_a_model_returning_null_is_named(tmp_path: Path) -> None:
    async def body(worker: Worker) -> None:
        with pytest.raises(ModelError, match="output 'prediction' is NULL: the model returned "
                                             "no values"):
            await worker.predict(Batch({"s": ["a"]}, 1), 30)
        assert worker.state == "ready"
    serve(spec(tmp_path, "nothing", {"name": "s", "type": "string"}), body)


def test_an_r_pin_that_is_not_a_package_name_and_version_is_refused_before_use(
        tmp_path: Path) -> None:
    """The manifest takes Python's pins (extras, markers). ``pkga[b]==1.0`` was a glob
    pattern in BATON_R_PACKAGES, so ``pkgab_1.0.tar.gz``, another package, was installed (its
    code run) for it; a marker became part of the version. Now each is named, and nothing is
    looked up or installed."""
    import subprocess

    from baton.bundle.manifest import EnvironmentSpec
    from baton.env.builder import EnvBuilder
    from baton.env.r import r_installation
    from baton.errors import EnvironmentBuildError

    files, marker = tmp_path / "r-packages", tmp_path / "installed"
    src = files / "src" / "pkgab"
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text(
        "Package: pkgab\nVersion: 1.0\nTitle: T\nDescription: A test.\nLicense: MIT\n"
        "Author: B\nMaintainer: B <b@example.com>\n")
    (src / "NAMESPACE").write_text("")
    (src / "R" / "a.R").write_text(f"writeLines('ran', {str(marker)!r})\n")
    subprocess.run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(src)],
                   cwd=files, check=True, capture_output=True, timeout=120)
    r = r_installation()[1].rsplit(".", 1)[0]
    builder = EnvBuilder(tmp_path / "envs", r_packages=files)
    odd = ("pkga[b]==1.0", 'pkgab==1.0; python_version > "3"', "pkgab==1.*", ".pkg==1.0")
    for pin in odd:
        with pytest.raises(EnvironmentBuildError, match=r"not R package pins .*: "
                                                        + re.escape(repr(pin))) as info:
            builder.ensure(EnvironmentSpec("", (pin,), r))
        assert info.value.details["failures"] == [{"requirement": pin,
                                                   "reason": "not an R package pin"}]
    assert not marker.exists()
    builder.ensure(EnvironmentSpec("", ("pkgab==1.0",), r))  # the real pin installs it
    assert marker.exists()


def test_output_text_is_utf8_or_refused_never_rewritten(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 came back as the text "a<ff>" (R's notation for the byte),
    an answer the model never gave; a string marked latin1 and unmarked UTF-8 bytes are
    text, sent as UTF-8."""
    field = {"name": "s", "type": "string"}

    async def garbled(worker: Worker) -> None:
        with pytest.raises(ModelError, match="output 'prediction' record 1 is not valid "
                                             "UTF-8 text"):
            await worker.predict(Batch({"s": ["a", "b"]}, 2), 30)
    serve(spec(tmp_path, "garbled", field), garbled)

    async def latin1(worker: Worker) -> None:
        got = await worker.predict(Batch({"s": ["a", "b"]}, 2), 30)
        assert list(got.columns["prediction"]) == ["café", "café"]
    serve(spec(tmp_path, "latin1", field), latin1)


def test_predict_proba_on_a_model_without_class_probabilities_says_so(tmp_path: Path) -> None:
    """loess's predict() takes type = "prob" into its `...` and answers a vector: this was
    "attempt to set an attribute on NULL" (no class names, so no prediction)."""
    import subprocess

    rscript = shutil.which("Rscript")
    assert rscript is not None
    subprocess.run([rscript, "--vanilla", "-e", "saveRDS(loess(dist ~ speed, cars), 'm.rds')"],
                   cwd=tmp_path, check=True, timeout=60, capture_output=True)
    worker_spec = WorkerSpec(
        model="loess", python=Path(rscript), bundle_dir=tmp_path, runner=R, load_timeout=60,
        load={"model": {"runner": "r", "entrypoint": "builtin:rds", "artifact": "m.rds",
                        "method": "predict_proba"},
              "kind": "records", "inputs": ["speed"], "outputs": ["prediction", "proba_a"],
              "fields": [{"name": "speed", "type": "float"}]})

    async def body(worker: Worker) -> None:
        with pytest.raises(ModelError, match=r'predict\(model, newdata, type = "prob"\) '
                                             r"returned numeric without column names, not a "
                                             r"matrix of probabilities"):
            await worker.predict(Batch({"speed": np.array([10.0, 12.0])}, 2), 30)
    serve(worker_spec, body)
