"""``baton score`` end to end on a real bundle: formats, dead letters, isolation, chunking,
exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baton.runtime.sizing import usable_cpus
from tests.conftest import run_baton
from tests.scoring.conftest import (
    expected_y,
    good_rows,
    read_jsonl,
    score,
    write_csv,
    write_jsonl,
    write_parquet,
)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dead_by_row(path: Path) -> dict[int | None, dict[str, Any]]:
    return {d["row"]: d for d in read_jsonl(path)}


def field_of(dead: dict[str, Any]) -> str | None:
    return dead["violations"][0]["field"] if dead.get("violations") else None


# -- Formats in and out -----------------------------------------------------------------------

@pytest.mark.parametrize(("fmt_in", "fmt_out"), [("csv", "csv"), ("jsonl", "jsonl"),
                                                 ("parquet", "parquet"), ("csv", "parquet"),
                                                 ("parquet", "jsonl")])
def test_every_format_in_and_out(scorer_bundle: Path, baton_env: dict[str, str], tmp_path: Path,
                                 fmt_in: str, fmt_out: str) -> None:
    rows = good_rows(60)
    writer = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}[fmt_in]
    inp = writer(tmp_path / f"in.{fmt_in}", rows)
    out = tmp_path / f"scores.{fmt_out}"
    r, report = score(scorer_bundle, inp, out, baton_env, "--chunk-rows", "16")
    assert r.returncode == 0, r.stderr
    got = _read(out)
    assert [g["row"] for g in got] == list(range(60))  # input order, 0-based row numbers
    for g, row in zip(got, rows, strict=True):
        assert float(g["y"]) == expected_y(row["x"], row["n"], row["flag"])
        assert g["label"] == f"{row['kind']}{row['n']}"
    assert list(got[0]) == ["row", "y", "label"]  # the id column, then the outputs
    assert report["rows_in"] == report["scored"] == 60 and report["dead_lettered"] == 0
    assert (tmp_path / "scores.dead-letter.jsonl").read_text() == ""
    assert report["model"]["name"] == "scorer" and report["chunks"] == 4


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        return [{**r, "row": int(r["row"])} for r in read_csv_rows(path)]
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return pq.read_table(path).to_pylist()


def test_id_column_is_copied_and_joins_back(scorer_bundle: Path, baton_env: dict[str, str],
                                            tmp_path: Path) -> None:
    rows = [{"customer": f"cust-{i:04d}", **r} for i, r in enumerate(good_rows(40))]
    rows[5]["x"] = 500.0  # dead-lettered: its id is in the dead letter, not the scores
    inp = write_parquet(tmp_path / "in.parquet", list(reversed(rows)))
    out = tmp_path / "out.parquet"
    r, _ = score(scorer_bundle, inp, out, baton_env, "--id-column", "customer")
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out)
    assert table.column_names == ["customer", "y", "label"]
    assert table.schema.field("customer").type == pa.string()
    by_id = {row["customer"]: row for row in rows}
    scored = table.to_pylist()
    assert [s["customer"] for s in scored] == [r["customer"] for r in reversed(rows)
                                               if r["customer"] != "cust-0005"]
    for s in scored:
        src = by_id[s["customer"]]
        assert s["y"] == expected_y(src["x"], src["n"], src["flag"])
    [dead] = read_jsonl(tmp_path / "out.dead-letter.jsonl")
    assert dead["key"] == "cust-0005" and dead["row"] == 34
    assert json.loads(dead["payload"])["customer"] == "cust-0005"


def test_csv_ids_and_jsonl_ids_keep_what_was_read(scorer_bundle: Path, baton_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    rows = [{"id": 1000 + i, **r} for i, r in enumerate(good_rows(5))]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    r, _ = score(scorer_bundle, inp, tmp_path / "out.jsonl", baton_env, "--id-column", "id")
    assert r.returncode == 0, r.stderr
    assert [o["id"] for o in read_jsonl(tmp_path / "out.jsonl")] == [1000, 1001, 1002, 1003,
                                                                      1004]
    inp = write_csv(tmp_path / "in.csv", rows, header=["id", "x", "kind", "n", "flag"])
    r, _ = score(scorer_bundle, inp, tmp_path / "out.csv", baton_env, "--id-column", "id")
    assert r.returncode == 0, r.stderr
    assert [o["id"] for o in read_csv_rows(tmp_path / "out.csv")] == ["1000", "1001", "1002",
                                                                      "1003", "1004"]


# -- Bad rows: dead letters with their stage and field, and the job goes on --------------------

def test_bad_csv_rows_are_dead_lettered_and_the_rest_scored(
        scorer_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    rows: list[Any] = [dict(r) for r in good_rows(24)]
    bad = {2: ("x", "abc"), 5: ("x", 150.0), 7: ("kind", None), 9: ("kind", "z"),
           11: ("n", None), 12: ("n", "3.5"), 14: ("flag", "maybe"), 16: ("x", 13.0),
           18: ("x", 99.0)}
    for i, (col, value) in bad.items():
        rows[i][col] = value
    rows[20] = ["1.0", "a"]  # a line with two cells instead of four
    rows[3]["n"] = "4.0"  # an integral decimal is an integer
    inp = write_csv(tmp_path / "in.csv", rows)
    for chunk in ("4", "1000"):
        out = tmp_path / f"out-{chunk}.csv"
        r, report = score(scorer_bundle, inp, out, baton_env, "--chunk-rows", chunk)
        assert r.returncode == 0, r.stderr
        dead = dead_by_row(tmp_path / f"out-{chunk}.dead-letter.jsonl")
        assert sorted(dead) == sorted([*bad, 20])
        expect = {2: ("contract", "x", "not a number"), 5: ("contract", "x", "above max 100.0"),
                  7: ("contract", "kind", "missing value"),
                  9: ("contract", "kind", "not an allowed category"),
                  11: ("contract", "n", "missing value"), 12: ("contract", "n", "not an integer"),
                  14: ("contract", "flag", "not a boolean"), 16: ("model", None, "unlucky x=13"),
                  18: ("output_contract", "y", "<= 1000.0"),
                  20: ("decode", None, "expected 4 cells, got 2")}
        for row, (stage, field, text) in expect.items():
            d = dead[row]
            assert d["stage"] == stage, d
            assert text in d["message"], d
            if field is not None:
                assert field_of(d) == field and field in d["message"]
            assert d["model"] == "scorer" and d["digest"].startswith("sha256:")
            assert d["payload_encoding"] == "utf-8" and d["time"] > 0
        assert dead[2]["violations"][0]["got"] == "abc"
        assert dead[2]["code"] == "CONTRACT_VIOLATION" and dead[16]["code"] == "MODEL_ERROR"
        # The row as read: this file is read as text from its first bad cell on.
        assert json.loads(dead[16]["payload"]) == {"x": "13.0", "kind": "b", "n": "2",
                                                   "flag": "false"}
        assert dead[20]["payload"] == "1.0,a" and dead[20]["code"] == "MALFORMED_ROW"
        scored = read_csv_rows(out)
        assert [int(s["row"]) for s in scored] == [i for i in range(24) if i not in dead]
        by_row = {int(x["row"]): x for x in scored}
        assert float(by_row[3]["y"]) == expected_y(rows[3]["x"], 4, rows[3]["flag"])
        assert report["dead_lettered"] == 10 and report["scored"] == 14
        assert report["dead_by_stage"] == {"contract": 7, "model": 1, "output_contract": 1,
                                           "decode": 1}
        assert report["rows_in"] == 24


def test_bad_jsonl_lines_are_dead_lettered(scorer_bundle: Path, baton_env: dict[str, str],
                                           tmp_path: Path) -> None:
    lines: list[Any] = [dict(r) for r in good_rows(12)]
    lines[1] = '{"x": 1.0, "kind": "a",'  # malformed JSON
    lines[3]["x"] = "abc"
    lines[4]["kind"] = None
    lines[6]["kind"] = "z"
    lines[8]["x"] = -101.0
    lines[10]["x"] = 13.0
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    r, report = score(scorer_bundle, inp, tmp_path / "out.jsonl", baton_env)
    assert r.returncode == 0, r.stderr
    dead = dead_by_row(tmp_path / "out.dead-letter.jsonl")
    assert {k: (d["stage"], field_of(d)) for k, d in dead.items()} == {
        1: ("decode", None), 3: ("contract", "x"), 4: ("contract", "kind"),
        6: ("contract", "kind"), 8: ("contract", "x"), 10: ("model", None)}
    assert dead[1]["payload"] == lines[1] and dead[1]["code"] == "INVALID_JSON"
    assert dead[3]["violations"][0]["got"] == "abc"
    assert [o["row"] for o in read_jsonl(tmp_path / "out.jsonl")] == [0, 2, 5, 7, 9, 11]
    assert report["dead_by_stage"] == {"decode": 1, "contract": 4, "model": 1}

    # The same bad values found by the column checks (a chunk Arrow can parse) or by the
    # line-by-line fallback (a chunk it cannot) are reported alike.
    alone = write_jsonl(tmp_path / "alone.jsonl", [lines[4], lines[6], lines[8], lines[0]])
    r, _ = score(scorer_bundle, alone, tmp_path / "alone.jsonl.out.jsonl", baton_env)
    again = dead_by_row(tmp_path / "alone.jsonl.out.dead-letter.jsonl")
    assert {k: field_of(d) for k, d in again.items()} == {0: "kind", 1: "kind", 2: "x"}


def test_bad_parquet_values_are_dead_lettered(scorer_bundle: Path, baton_env: dict[str, str],
                                              tmp_path: Path) -> None:
    rows = good_rows(10)
    table = pa.table({"x": pa.array([r["x"] for r in rows[:9]] + [None]),
                      "kind": pa.array([r["kind"] for r in rows[:4]] + ["q"] + [
                          r["kind"] for r in rows[5:]]).dictionary_encode(),
                      "n": pa.array([3.0, 1.0, 2.5, 0.0, 1.0, 2.0, -1.0, 4.0, 5.0, 6.0]),
                      "flag": pa.array([None] * 10, pa.bool_())})
    inp = write_parquet(tmp_path / "in.parquet", table)
    r, _ = score(scorer_bundle, inp, tmp_path / "out.parquet", baton_env)
    assert r.returncode == 0, r.stderr
    dead = dead_by_row(tmp_path / "out.dead-letter.jsonl")
    assert {k: (field_of(d), d["violations"][0]["message"]) for k, d in dead.items()} == {
        2: ("n", "not an integer"), 4: ("kind", "not an allowed category"),
        6: ("n", "below min 0"), 9: ("x", "missing value (the field is not nullable)")}
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [o["row"] for o in out] == [0, 1, 3, 5, 7, 8]
    assert out[0]["y"] == expected_y(rows[0]["x"], 3, None)


def test_a_model_failure_dead_letters_only_its_rows(scorer_bundle: Path,
                                                    baton_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    rows = good_rows(64)
    for i in (5, 6, 40):
        rows[i]["x"] = 13.0
    rows[50]["x"] = 66.0  # kills its worker: restarted, the row dead-lettered
    inp = write_csv(tmp_path / "in.csv", rows)
    r, report = score(scorer_bundle, inp, tmp_path / "out.csv", baton_env,
                      "--chunk-rows", "32", "--workers", "2")
    assert r.returncode == 0, r.stderr
    dead = dead_by_row(tmp_path / "out.dead-letter.jsonl")
    assert sorted(dead) == [5, 6, 40, 50]
    assert all(d["stage"] == "model" for d in dead.values())
    assert dead[50]["code"] == "WORKER_CRASHED" and dead[5]["code"] == "MODEL_ERROR"
    scored = read_csv_rows(tmp_path / "out.csv")
    assert [int(s["row"]) for s in scored] == [i for i in range(64) if i not in dead]
    assert report["workers"] == 2 and report["scored"] == 60


def test_a_job_leaves_a_cpu_to_its_own_process_when_it_sizes_its_workers(
        scorer_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    """Unset, a job's workers are sized as serve's are, but with one CPU kept for the job's
    own process (it reads, checks and writes all along): two workers only from 3 CPUs."""
    inp = write_csv(tmp_path / "in.csv", good_rows(64))
    self_sized = {**baton_env, "BATON_WORKERS": "0"}  # the tests' default is one
    r, report = score(scorer_bundle, inp, tmp_path / "out.csv", self_sized)
    assert r.returncode == 0, r.stderr
    assert report["workers"] == (2 if usable_cpus() >= 3 else 1), report
    assert report["scored"] == 64


# -- Chunking and order -------------------------------------------------------------------------

def test_chunk_size_never_changes_the_output(scorer_bundle: Path, baton_env: dict[str, str],
                                             tmp_path: Path) -> None:
    rows = good_rows(120)
    rows[17]["x"] = "oops"
    rows[60]["x"] = 13.0
    rows[61]["kind"] = "z"
    inp = write_csv(tmp_path / "in.csv", rows)
    outputs, deads = [], []
    for chunk in ("1", "7", "64", "100000"):
        out = tmp_path / f"out-{chunk}.parquet"
        r, report = score(scorer_bundle, inp, out, baton_env, "--chunk-rows", chunk)
        assert r.returncode == 0, r.stderr
        outputs.append(pq.read_table(out).to_pylist())
        deads.append([{k: v for k, v in d.items() if k != "time"}
                      for d in read_jsonl(tmp_path / f"out-{chunk}.dead-letter.jsonl")])
        assert report["chunk_rows"] == int(chunk)
    assert all(o == outputs[0] for o in outputs) and all(d == deads[0] for d in deads)
    assert [o["row"] for o in outputs[0]] == [i for i in range(120) if i not in (17, 60, 61)]


def test_a_bad_cell_deep_in_a_large_csv(scorer_bundle: Path, baton_env: dict[str, str],
                                        tmp_path: Path) -> None:
    """Past the first read block: the reader switches to text columns where it failed,
    and row numbers stay right around malformed lines before and after."""
    rows: list[Any] = [{**r, "pad": "p" * 100} for r in good_rows(40_000)]
    rows[1_000] = ["1.0"]  # malformed, in the first block
    rows[29_990] = ["2.0"]  # malformed, in the block that fails (so reported twice)
    rows[30_000]["x"] = "n/a?"  # the first cell that does not convert
    rows[30_001]["x"] = "NA"  # a missing value
    rows[35_000] = ["1.0", "b", "1", "true", "pad", "extra"]
    inp = write_csv(tmp_path / "in.csv", rows, header=["x", "kind", "n", "flag", "pad"])
    assert inp.stat().st_size > 3 << 20
    r, report = score(scorer_bundle, inp, tmp_path / "out.parquet", baton_env,
                      "--chunk-rows", "5000")
    assert r.returncode == 0, r.stderr
    dead = dead_by_row(tmp_path / "out.dead-letter.jsonl")
    assert {k: d["stage"] for k, d in dead.items()} == {
        1_000: "decode", 29_990: "decode", 30_000: "contract", 30_001: "contract",
        35_000: "decode"}
    assert len(read_jsonl(tmp_path / "out.dead-letter.jsonl")) == 5
    assert dead[30_001]["violations"][0]["message"].startswith("missing value")
    ids = pq.read_table(tmp_path / "out.parquet").column("row").to_pylist()
    assert ids == [i for i in range(40_000) if i not in dead]
    y = pq.read_table(tmp_path / "out.parquet").column("y").to_pylist()
    assert y[-1] == expected_y(rows[-1]["x"], rows[-1]["n"], rows[-1]["flag"])
    assert report["rows_in"] == 40_000


# -- Exit codes and errors ------------------------------------------------------------------------

def test_what_cannot_run_exits_non_zero_with_a_clear_error(
        scorer_bundle: Path, tensor_bundle: Path, baton_env: dict[str, str],
        tmp_path: Path) -> None:
    good = write_csv(tmp_path / "in.csv", good_rows(3))
    cases = [
        (tmp_path / "nowhere", good, tmp_path / "o.csv", 1, "BUNDLE_NOT_FOUND"),
        (tmp_path, good, tmp_path / "o.csv", 2, "INVALID_MANIFEST"),
        (scorer_bundle, tmp_path / "missing.csv", tmp_path / "o.csv", 2, "INPUT_NOT_FOUND"),
        (scorer_bundle, good, good / "o.csv", 2, "OUTPUT_NOT_WRITABLE"),
        (scorer_bundle, write_csv(tmp_path / "in.xlsx", []), tmp_path / "o.csv", 2,
         "UNKNOWN_FORMAT"),
        (tensor_bundle, good, tmp_path / "o.csv", 2, "UNSUPPORTED_CONTRACT"),
    ]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    cases.append((scorer_bundle, tmp_path / "junk.parquet", tmp_path / "o.csv", 2,
                  "INPUT_UNREADABLE"))
    write_csv(tmp_path / "no-kind.csv", [{"x": 1.0, "n": 1}], header=["x", "n", "flag"])
    cases.append((scorer_bundle, tmp_path / "no-kind.csv", tmp_path / "o.csv", 2,
                  "MISSING_COLUMN"))
    for bundle, inp, out, code, name in cases:
        r = run_baton("score", bundle, "--input", inp, "--output", out, env=baton_env)
        assert r.returncode == code, (name, r.stdout, r.stderr)
        assert f"error [{name}]" in r.stderr, r.stderr
        assert not (tmp_path / "o.csv").exists()
        assert not list(tmp_path.glob(".o.csv.*"))  # no temporary file left behind
    r = run_baton("score", scorer_bundle, "--input", good, "--output", tmp_path / "o.csv",
                  "--id-column", "nope", env=baton_env)
    assert r.returncode == 2 and "--id-column" in r.stderr


def test_quiet_report_and_format_option(scorer_bundle: Path, baton_env: dict[str, str],
                                        tmp_path: Path) -> None:
    inp = write_csv(tmp_path / "data.txt", good_rows(10))
    report = tmp_path / "reports" / "summary.json"
    r = run_baton("score", scorer_bundle, "--input", inp, "--output", tmp_path / "scores.txt",
                  "--format", "csv", "--quiet", "--report", report, env=baton_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert [int(x["row"]) for x in read_csv_rows(tmp_path / "scores.txt")] == list(range(10))
    s = json.loads(report.read_text())
    for key in ("rows_in", "scored", "dead_lettered", "seconds", "rows_per_s",
                "steady_rows_per_s", "startup_seconds", "peak_rss_mb"):
        assert key in s
    assert s["peak_rss_mb"]["total"] == pytest.approx(s["peak_rss_mb"]["baton"]
                                                      + s["peak_rss_mb"]["workers"], abs=0.2)
    assert s["peak_rss_mb"]["workers"] > 0

    r = run_baton("score", scorer_bundle, "--input", inp, "--format", "csv", "--output",
                  tmp_path / "s.jsonl", env=baton_env)
    assert r.returncode == 0
    assert "scored 10 of 10 rows" in r.stdout and "dead-lettered 0 rows" in r.stdout
    assert "peak memory" in r.stdout


def test_empty_inputs_and_a_malformed_last_line(scorer_bundle: Path, baton_env: dict[str, str],
                                                tmp_path: Path) -> None:
    empty = write_csv(tmp_path / "empty.csv", [])
    r, report = score(scorer_bundle, empty, tmp_path / "empty-out.csv", baton_env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "empty-out.csv").read_text().splitlines() == ['"row","y","label"']
    assert report["rows_in"] == 0
    (tmp_path / "empty.jsonl").write_text("\n")
    r, _ = score(scorer_bundle, tmp_path / "empty.jsonl", tmp_path / "empty-out.parquet",
                 baton_env)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "empty-out.parquet").column_names == ["row", "y", "label"]

    rows: list[Any] = [*good_rows(3), ["2.0", "a"]]
    r, report = score(scorer_bundle, write_csv(tmp_path / "tail.csv", rows),
                      tmp_path / "tail-out.csv", baton_env)
    assert r.returncode == 0, r.stderr
    assert [d["row"] for d in read_jsonl(tmp_path / "tail-out.dead-letter.jsonl")] == [3]
    assert report["rows_in"] == 4 and report["scored"] == 3


def test_a_model_that_fails_on_everything_stops_the_job(
        scorer_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    rows = good_rows(40)
    for r in rows:
        r["x"] = 13.0
    inp = write_csv(tmp_path / "in.csv", rows)
    r, _ = score(scorer_bundle, inp, tmp_path / "out.csv", baton_env, "--chunk-rows", "20")
    assert r.returncode == 5, r.stderr
    assert "error [MODEL_FAILS_EVERY_ROW]" in r.stderr and "unlucky x=13" in r.stderr
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.dead-letter.jsonl").exists()
