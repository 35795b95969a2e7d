"""One contract, one meaning: one set of generated records (nulls in every nullable field,
edge values, every category, some records broken) gets the same verdict and the same answer
through ``/v1`` records, V2 tensors, ``baton score`` from CSV, JSON Lines and Parquet, and a
stream (the ``file://`` connector)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import Server, run_baton
from tests.differential import V2_DATATYPES, Packaged, package_all, same, sample_records

#: A record's verdict on one path: ("ok", its answer) or ("rejected", the field named).
Verdict = tuple[str, Any]
MODELS = ["native", "strings"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Packaged]:
    return package_all(tmp_path_factory.mktemp("paths"))


@pytest.fixture(scope="module")
def server(packaged: dict[str, Packaged], baton_env: dict[str, str]) -> Iterator[Server]:
    srv = Server([packaged[m].path for m in MODELS], baton_env, [])
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()


def _verdict(status: int, body: dict[str, Any], answer: Any) -> Verdict:
    if status == 200:
        return ("ok", answer)
    assert status == 422, body
    return ("rejected", body["details"]["violations"][0]["field"])


def via_v1(server: Server, name: str, records: list[dict[str, Any]]) -> list[Verdict]:
    out = []
    for rec in records:
        r = server.client.post(f"/v1/models/{name}/predict", json=[rec])
        out.append(_verdict(r.status_code, r.json(), r.status_code == 200
                            and r.json()["predictions"][0]))
    return out


def via_v2(server: Server, p: Packaged, records: list[dict[str, Any]]) -> list[Verdict]:
    out = []
    for rec in records:
        inputs = [{"name": s.name, "shape": [1], "datatype": V2_DATATYPES[s.type],
                   "data": [rec[s.name]]} for s in p.fields]
        r = server.client.post(f"/v2/models/{p.name}/infer", json={"inputs": inputs})
        answer = r.status_code == 200 and {o["name"]: o["data"][0] for o in r.json()["outputs"]}
        out.append(_verdict(r.status_code, r.json(), answer))
    return out


def _csv_cell(v: Any) -> str:
    """The CSV convention: a null is an empty cell, text is always quoted ("" is empty)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace('"', '""') + '"'
    return repr(v)


def write_input(path: Path, p: Packaged, records: list[dict[str, Any]]) -> Path:
    names = [s.name for s in p.fields]
    if path.suffix == ".csv":
        path.write_text(",".join(names) + "\n" + "".join(
            ",".join(_csv_cell(r[n]) for n in names) + "\n" for r in records))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def via_score(p: Packaged, records: list[dict[str, Any]], fmt: str, env: dict[str, str],
              folder: Path) -> list[Verdict]:
    inp = write_input(folder / f"{p.name}-in.{fmt}", p, records)
    out = folder / f"{p.name}-{fmt}-scores.jsonl"
    r = run_baton("score", p.path, "--input", inp, "--output", out, "-q", env=env)
    assert r.returncode == 0, r.stderr
    verdicts: dict[int, Verdict] = {}
    for row in _lines(out):
        verdicts[row.pop("row")] = ("ok", row)
    for dead in _lines(out.with_name(out.stem + ".dead-letter.jsonl")):
        assert dead["stage"] == "contract", dead
        verdicts[dead["row"]] = ("rejected", dead["violations"][0]["field"])
    return [verdicts[i] for i in range(len(records))]


def via_stream(p: Packaged, records: list[dict[str, Any]], env: dict[str, str],
               folder: Path) -> list[Verdict]:
    inp, out, dead = (folder / f"{p.name}-{n}.jsonl" for n in ("stream-in", "stream-out",
                                                               "stream-dead"))
    inp.write_text("")
    srv = Server([p.path], env, ["--input", f"file://{inp}", "--output", f"file://{out}",
                                 "--dead-letter", f"file://{dead}"])
    try:
        srv.wait_ready(timeout=600)
        write_input(inp, p, records)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [*_lines(out), *_lines(dead)] if out.exists() and dead.exists() else []
            if len(done) >= len(records):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the stream answered {len(done)} of {len(records)} records in 120 s:"
                        f"\n{srv.output()[-3000:]}")
    finally:
        srv.stop()
    verdicts = {int(o["key"]): ("ok", o["output"]) for o in _lines(out)}
    for d in _lines(dead):
        verdicts[int(d["key"])] = ("rejected", d["violations"][0]["field"])
    first = min(verdicts)  # line numbers count from 0 or 1: the records are in order
    return [verdicts[first + i] for i in range(len(records))]


def _agree(a: list[Verdict], b: list[Verdict]) -> list[int]:
    """Indexes of the records whose verdicts differ."""
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True))
            if x[0] != y[0] or (x[0] == "ok" and not same([x[1]], [y[1]]))
            or (x[0] == "rejected" and x[1] != y[1])]


@pytest.mark.parametrize("name", MODELS)
def test_every_path_gives_each_record_the_same_verdict_and_answer(
        packaged: dict[str, Packaged], server: Server, baton_env: dict[str, str],
        tmp_path: Path, name: str) -> None:
    p = packaged[name]
    records = sample_records(p.fields, 40, seed=7)
    v1 = via_v1(server, name, records)
    rejected = [i for i, v in enumerate(v1) if v[0] == "rejected"]
    assert rejected, "the set holds broken records: every path must refuse them alike"
    accepted = [i for i, v in enumerate(v1) if v[0] == "ok"]
    notebook = p.notebook([records[i] for i in accepted])
    assert same([v1[i][1] for i in accepted], notebook)
    paths = {"v2": via_v2(server, p, records),
             **{f"score {fmt}": via_score(p, records, fmt, baton_env, tmp_path)
                for fmt in ("csv", "jsonl", "parquet")},
             "stream file://": via_stream(p, records, baton_env, tmp_path)}
    for path, verdicts in paths.items():
        differ = _agree(v1, verdicts)
        assert not differ, (f"{name}: {path} differs from /v1 on " + "; ".join(
            f"{records[i]}: v1 {v1[i]}, {path} {verdicts[i]}" for i in differ[:3]))
