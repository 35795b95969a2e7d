"""Missing values and empty strings in ``baton score`` inputs: one meaning per format, the
one the HTTP API gives the same record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import records_contract, write_bundle
from tests.scoring.conftest import read_jsonl, score, write_jsonl, write_parquet

ECHO_CODE = '''
class Model:
    """Says what it received: repr() of each text, so None and '' stay apart."""

    def predict(self, inputs):
        return {"seen": [f"{k!r}|{n!r}|{'nan' if x is None or x != x else float(x)}"
                         for k, n, x in zip(inputs["kind"], inputs["note"], inputs["x"])]}
'''

ECHO_CONTRACT = records_contract(
    inputs={"kind": {"type": "string", "nullable": True, "categories": ["a", "b"]},
            "note": {"type": "string", "nullable": True},
            "x": {"type": "float", "nullable": True}},
    outputs={"seen": "string"})


@pytest.fixture(scope="module")
def echo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "echo", name="echo",
                        code=ECHO_CODE, contract=ECHO_CONTRACT)


def _seen(bundle: Path, inp: Path, env: dict[str, str], *args: str
          ) -> tuple[list[str], dict[int, dict[str, Any]]]:
    out = inp.with_name(inp.stem + "-scores.jsonl")
    r, _ = score(bundle, inp, out, env, "-q", *args)
    assert r.returncode == 0, r.stderr
    dead = {d["row"]: d for d in read_jsonl(out.with_name(out.stem + ".dead-letter.jsonl"))}
    return [s["seen"] for s in read_jsonl(out)], dead


def test_csv_empty_cells_and_markers_are_null_quoted_text_is_text(
        echo_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text('kind,note,x\n'
                   ',,\n'                    # empty cells: null in every column
                   'a,"",1.5\n'              # a quoted "" is the empty string
                   'NA,NULL,nan\n'           # pandas' null markers
                   'b,"NA",2\n'              # a quoted marker is text
                   '"",x,3\n'               # "" is not one of the categories
                   '"a","",""\n'             # no number reads "" or "NA", quoted or not:
                   'b,"NA","NA"\n')          # null (and the rest of the file is read as text)
    seen, dead = _seen(echo_bundle, inp, baton_env)
    assert seen == ["None|None|nan", "'a'|''|1.5", "None|None|nan", "'b'|'NA'|2.0",
                    "'a'|''|nan", "'b'|'NA'|nan"]
    assert list(dead) == [4]
    assert dead[4]["message"] == ("input contract violated at row 4, field 'kind': not an "
                                  "allowed category; expected string one of 'a', 'b', or "
                                  "null, got ''")


def test_null_values_option_replaces_the_markers(echo_bundle: Path, baton_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text("kind,note,x\n,NA,\na,missing,missing\n")
    seen, dead = _seen(echo_bundle, inp, baton_env, "--null-values", "missing,-")
    assert seen == ["None|'NA'|nan", "'a'|None|nan"] and not dead
    seen, dead = _seen(echo_bundle, inp, baton_env, "--null-values", "")
    assert seen == ["None|'NA'|nan"]  # only the empty cell is null now
    [v] = dead[1]["violations"]  # "missing" is text in 'note', and not a number in 'x'
    assert (v["field"], v["got"], v["message"]) == ("x", "missing", "not a number")


def test_json_lines_and_parquet_nulls_are_null_and_empty_strings_empty(
        echo_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    rows = [{"kind": None, "note": "", "x": None}, {"kind": "a", "note": None, "x": 1.0},
            {"note": "NA", "x": 2.0}]
    want = ["None|''|nan", "'a'|None|1.0", "None|'NA'|2.0"]
    for inp in (write_jsonl(tmp_path / "in.jsonl", rows),
                write_parquet(tmp_path / "in.parquet", rows)):
        seen, dead = _seen(echo_bundle, inp, baton_env)
        assert (seen, dead) == (want, {}), inp.name
