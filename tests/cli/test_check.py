"""`baton check` always reports: whatever fails, and wherever, is a failed stage in the table
and in the JSON report, with its exit code, and nothing else reaches standard error.

The models here are the scaffolded one (`baton init`) edited to fail in one way each.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from baton.check import run_check
from baton.settings import Settings
from tests.cli.conftest import check_streams, edit
from tests.conftest import TENSOR_CODE, TENSOR_CONTRACT, run_baton, write_bundle

PREDICT = "    def predict(self, inputs):\n"


def fail_in_predict(bundle: Path, condition: str, statement: str) -> None:
    """Make the scaffolded model run ``statement`` first whenever ``condition`` holds."""
    edit(bundle / "model" / "predict.py", PREDICT,
         f"{PREDICT}        if {condition}:\n            {statement}\n")


def assert_only_the_error_on_stderr(stderr: str, code: str) -> None:
    """Standard error holds the one `error [CODE]` line: no asyncio noise ('Event loop is
    closed', 'Task was destroyed', 'Loop ... is closed'), no traceback of Baton's own."""
    assert stderr.splitlines() and stderr.splitlines()[0].startswith(f"error [{code}]: "), stderr
    assert len(stderr.splitlines()) == 1, stderr


def test_a_model_error_while_measuring_latency_fails_the_latency_stage_with_a_report(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    """Issue 10: a model failing only on batches of 100 rows escaped the check: no stage
    table, no `FAIL at stage`, no report, and its traceback on standard error."""
    fail_in_predict(scaffolded, "len(inputs['amount']) == 100",
                    "raise ValueError('no batches of a hundred')")
    code, report, stdout, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["exit_code"], report["failed_stage"]) == (5, 5, "latency")
    assert report["error"]["code"] == "MODEL_ERROR"
    assert "rows 100" in report["error"]["message"]
    assert "no batches of a hundred" in report["error"]["message"]
    assert [s["stage"] for s in report["stages"] if not s["ok"]] == ["latency"]
    assert "FAIL at stage latency" in stdout and "│ latency" in stdout
    assert "ValueError: no batches of a hundred" in "\n".join(report["log"])  # its traceback
    assert_only_the_error_on_stderr(stderr, "MODEL_ERROR")


def test_a_worker_crash_while_measuring_is_a_failed_stage_and_leaves_no_noise(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    fail_in_predict(scaffolded, "len(inputs['amount']) == 100", "import os; os._exit(3)")
    code, report, stdout, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"], report["error"]["code"]) == (
        5, "latency", "WORKER_CRASHED")
    assert "exited with code 3" in report["error"]["message"]
    assert "FAIL at stage latency" in stdout
    assert_only_the_error_on_stderr(stderr, "WORKER_CRASHED")


def test_a_load_failure_prints_its_traceback_on_stdout_and_nothing_else_on_stderr(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    """Before: 'worker slot 0 failed' and asyncio's 'Loop ... that handles pid ... is
    closed' on standard error, as if Baton had crashed."""
    edit(scaffolded / "model" / "predict.py", "self.scale = 1000.0",
         "raise RuntimeError('artifact is corrupt')")
    code, report, stdout, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (5, "load")
    assert "RuntimeError: artifact is corrupt" in stdout.split("FAIL at stage")[0]
    assert_only_the_error_on_stderr(stderr, "MODEL_LOAD_FAILED")


def test_a_long_load_traceback_is_cut_at_line_ends_with_a_marker(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    """The runner kept the last 4,000 characters of a traceback, starting mid-line."""
    edit(scaffolded / "model" / "predict.py", "self.scale = 1000.0", "\n".join([
        "cause = None",
        "        for i in range(80):",
        "            try:",
        "                raise KeyError(f'step {i}') from cause",
        "            except KeyError as exc:",
        "                cause = exc",
        "        raise RuntimeError('artifact is corrupt') from cause"]))
    code, report, stdout, _ = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (5, "load")
    lines = report["error"]["details"]["traceback"].splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith("... (") and lines[1].endswith(" lines cut)"), lines[:3]
    assert lines[-1] == "RuntimeError: artifact is corrupt"
    assert all(not line.startswith(" ") or line.startswith(("  File", "    "))
               for line in lines[2:]), "a kept line starts mid-line"
    assert lines[2].startswith(("Traceback", "  File", "    ", "KeyError", "The above")), lines[2]
    assert lines[1] in stdout


@pytest.mark.parametrize(("null_in_samples", "stage", "prefix"), [
    pytest.param(True, "single_records", "sample record 1 alone: ", id="sample-record-alone"),
    pytest.param(False, "null_record", "a sample record with age null, alone: ",
                 id="all-null-record"),
])
def test_a_model_that_breaks_on_a_lone_null_fails_at_check_time(
        scaffolded: Path, baton_env: dict[str, str], null_in_samples: bool, stage: str,
        prefix: str) -> None:
    """Alone, a record with a null age gives the model an all-null column: the case that
    broke categorical models in issue 10 while a batch with a neighbour worked. The
    scaffold's record 1 has a null age; without it, the all-null call still finds it."""
    if not null_in_samples:
        edit(scaffolded / "samples" / "input.json", '"age": null', '"age": 30')
    fail_in_predict(scaffolded, "all(a is None for a in inputs['age'])",
                    "raise TypeError(\"ufunc 'isnan' not supported for the input types\")")
    code, report, stdout, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"], report["error"]["code"]) == (5, stage, "MODEL_ERROR")
    assert report["error"]["message"].startswith(prefix)
    assert "isnan" in report["error"]["message"]
    assert f"FAIL at stage {stage}" in stdout
    assert_only_the_error_on_stderr(stderr, "MODEL_ERROR")


def test_an_answer_that_depends_on_the_batch_fails_with_both_answers(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    fail_in_predict(scaffolded, "len(inputs['amount']) == 1",
                    "return {'score': [0.5]}")
    code, report, _, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"], report["error"]["code"]) == (
        3, "single_records", "BATCH_DEPENDENT_ANSWER")
    assert report["error"]["details"] == {"record": 0, "field": "score", "in_batch": 0.16,
                                          "alone": 0.5}
    assert_only_the_error_on_stderr(stderr, "BATCH_DEPENDENT_ANSWER")


def test_an_unforeseen_exception_is_a_failed_stage_with_its_traceback(
        scaffolded: Path, baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug of Baton's own cannot be produced on demand by a real component: the comparison
    is replaced by one that raises. The check still ends with a report, exit 1."""
    def broken(*_: object) -> list[dict[str, object]]:
        raise KeyError("a bug")

    monkeypatch.setattr("baton.check.compare", broken)
    report = run_check(scaffolded, Settings.from_env(home=baton_home), iterations=5)
    assert (report.failed_stage, report.exit_code) == ("sample_mismatch", 1)
    assert report.error is not None and report.error["code"] == "CHECK_ERROR"
    assert report.error["message"] == "KeyError: 'a bug'"
    assert report.error["details"]["traceback"].rstrip().endswith("KeyError: 'a bug'")
    assert report.to_dict()["stages"][-1] == {
        "stage": "sample_mismatch", "ok": False, "seconds": report.stages[-1]["seconds"],
        "note": "KeyError: 'a bug'"}


def test_an_error_stopping_the_worker_after_a_pass_fails_the_shutdown_stage(
        scaffolded: Path, baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping the pool cannot be made to fail on demand: the real close runs, then
    raises. The check that passed every stage still ends with a report naming it."""
    from baton.runtime.pool import WorkerPool

    close = WorkerPool.close

    async def close_then_fail(self: WorkerPool, drain_timeout: float = 30.0) -> None:
        await close(self, drain_timeout)
        raise RuntimeError("could not stop")

    monkeypatch.setattr(WorkerPool, "close", close_then_fail)
    report = run_check(scaffolded, Settings.from_env(home=baton_home), iterations=5)
    assert (report.failed_stage, report.exit_code) == ("shutdown", 1)
    assert report.error is not None and report.error["message"] == "RuntimeError: could not stop"
    assert all(s["ok"] for s in report.stages[:-1]) and report.stages[-2]["stage"] == "latency"


def test_a_huge_error_message_with_brackets_is_printed_cut_and_kept_whole_in_the_report(
        scaffolded: Path, baton_env: dict[str, str]) -> None:
    """A megabyte message was printed whole in the table, the FAIL line and on stderr, and
    a `[/bold]` in it made the terminal renderer raise (rich markup)."""
    fail_in_predict(scaffolded, "True", "raise ValueError('[/bold] ' + 'x' * 1_000_000)")
    code, report, stdout, stderr = check_streams(scaffolded, baton_env)
    assert (code, report["failed_stage"]) == (5, "model")
    assert report["error"]["message"] == "ValueError: [/bold] " + "x" * 1_000_000
    assert len(report["stages"][-1]["note"]) <= 500
    assert "FAIL at stage model: ValueError: [/bold]" in stdout
    assert len(stdout) < 20_000 and "characters cut)" in stdout
    assert_only_the_error_on_stderr(stderr, "MODEL_ERROR")
    assert len(stderr) < 2_000 and stderr.rstrip().endswith("characters cut)")


def test_a_tensor_model_passes_every_stage(tensor_bundle: Path, tmp_path: Path,
                                           baton_env: dict[str, str]) -> None:
    bundle = tmp_path / "rowsum"
    shutil.copytree(tensor_bundle, bundle)
    code, report, _, stderr = check_streams(bundle, baton_env)
    assert code == 0, stderr
    notes = {s["stage"]: s["note"] for s in report["stages"]}
    assert notes["single_records"] == "2 calls of one record, answers as in the batch"
    assert notes["null_record"] == "no nullable input fields"
    assert stderr == ""


def test_a_tensor_row_whose_answer_depends_on_the_batch_fails(
        tmp_path: Path, baton_env: dict[str, str], numpy_pin: str) -> None:
    bundle = write_bundle(
        tmp_path / "scaled", name="scaled", requirements=[numpy_pin], contract=TENSOR_CONTRACT,
        code=TENSOR_CODE.replace("keepdims=True)", "keepdims=True) * len(x)"),
        samples=({"x": [[1.0, 2.0, 3.0], [0.5, 0.5, 0.0]]}, {"sum": [[12.0], [2.0]]}))
    code, report, _, _ = check_streams(bundle, baton_env)
    assert (code, report["failed_stage"], report["error"]["code"]) == (
        3, "single_records", "BATCH_DEPENDENT_ANSWER")
    assert report["error"]["details"] == {"record": 0, "field": "sum", "in_batch": 12.0,
                                          "alone": 6.0}


def test_a_report_that_cannot_be_written_is_an_error_after_the_table(
        scaffolded: Path, tmp_path: Path, baton_env: dict[str, str]) -> None:
    (tmp_path / "a-file").write_text("")
    r = run_baton("check", scaffolded, "--report", tmp_path / "a-file" / "report.json",
                  "--iterations", "5", env=baton_env)
    assert r.returncode == 1
    assert "PASS" in r.stdout and "│ latency" in r.stdout
    assert_only_the_error_on_stderr(r.stderr, "REPORT_UNWRITABLE")
    assert r.stderr.rstrip().endswith(f"report.json: File exists: {tmp_path / 'a-file'}")
