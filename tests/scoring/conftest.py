"""Bundles and input files for the scoring tests: a pure-Python scorer whose inputs choose
its failures, and a real scikit-learn model packaged with ``baton.package``."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import records_contract, run_baton, write_bundle

SCORER_CODE = '''
import os


class Model:
    """y = 2x + n (+1 when flag); x = 13 raises, x = 66 kills the worker, x = 99 gives a
    y beyond the output contract."""

    def predict(self, inputs):
        ys, labels = [], []
        for x, kind, n, flag in zip(inputs["x"], inputs["kind"], inputs["n"], inputs["flag"]):
            if x == 13.0:
                raise ValueError("unlucky x=13")
            if x == 66.0:
                os._exit(3)
            ys.append(5000.0 if x == 99.0 else 2 * x + n + (1 if flag else 0))
            labels.append(f"{kind}{n}")
        return {"y": ys, "label": labels}
'''

SCORER_CONTRACT = records_contract(
    inputs={"x": {"type": "float", "min": -100.0, "max": 100.0},
            "kind": {"type": "string", "categories": ["a", "b", "c"]},
            "n": {"type": "integer", "min": 0},
            "flag": {"type": "boolean", "nullable": True}},
    outputs={"y": {"type": "float", "min": -1000.0, "max": 1000.0}, "label": "string"})

COLUMNS = ["x", "kind", "n", "flag"]


def expected_y(x: float, n: int, flag: bool | None) -> float:
    return 2 * x + n + (1 if flag else 0)


@pytest.fixture(scope="session")
def scorer_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with no dependencies (its environment builds in a second)."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "scorer", name="scorer",
                        code=SCORER_CODE, contract=SCORER_CONTRACT)


def good_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    kinds = ["a", "b", "c"]
    flags: list[bool | None] = [True, False, None]
    return [{"x": float((i % 50) - 20) + 0.5, "kind": kinds[i % 3], "n": i % 7,
             "flag": flags[i % 3]} for i in range(start, start + n)]


def write_csv(path: Path, rows: Sequence[Sequence[Any] | dict[str, Any]],
              header: Sequence[str] = COLUMNS) -> Path:
    """Rows as dicts (missing keys: empty cells) or as raw cell lists (any length)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            if isinstance(row, dict):
                w.writerow(["" if row.get(c) is None else _cell(row[c]) for c in header])
            else:
                w.writerow(row)
    return path


def _cell(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def write_jsonl(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    """Records as dicts, or raw lines as strings."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def write_parquet(path: Path, table: pa.Table | list[dict[str, Any]]) -> Path:
    pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pylist(table),
                   path)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(bundle: Path, inp: Path, out: Path, env: dict[str, str], *args: str | Path
          ) -> tuple[Any, dict[str, Any]]:
    """Run ``baton score``; return the process and its JSON report (empty if none)."""
    report = out.parent / f"{out.name}.report.json"
    report.unlink(missing_ok=True)
    r = run_baton("score", bundle, "--input", inp, "--output", out, "--report", report,
                  *args, env=env)
    return r, json.loads(report.read_text()) if report.exists() else {}
