"""``baton score --ray`` on a real two-node Ray cluster: the same scores, dead letters and
summary as local ``baton score`` of the same file, with the work done on both nodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from baton.cluster.local import LocalCluster, ray_environment
from tests.conftest import EXAMPLE, free_port, run_baton, write_bundle
from tests.scoring.conftest import (
    SCORER_CODE,
    SCORER_CONTRACT,
    good_rows,
    read_jsonl,
    score,
    write_csv,
    write_jsonl,
    write_parquet,
)

COLUMNS = ["island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
           "body_mass_g", "year"]
#: Summary fields that differ between two runs of one job (time, memory, where it wrote).
VOLATILE = {"seconds", "startup_seconds", "scoring_seconds", "rows_per_s", "steady_rows_per_s",
            "peak_rss_mb", "workers", "output", "dead_letter", "cluster"}


@pytest.fixture
def env(baton_env: dict[str, str]) -> dict[str, str]:
    """``baton``'s environment as a Ray driver of the local cluster needs it."""
    return {**baton_env, **{k: v for k, v in ray_environment().items() if k.startswith("RAY_")}}


def penguins(n: int) -> list[dict[str, Any]]:
    samples = json.loads((EXAMPLE / "samples" / "input.json").read_text())
    rows = [dict(samples[i % len(samples)], penguin=f"p{i:05d}") for i in range(n)]
    rows[5]["island"] = "Atlantis"  # not a category: dead-lettered by the input contract
    rows[44]["body_mass_g"] = None
    rows[301]["year"] = None  # year is not nullable
    return rows


def both(bundle: Path, inp: Path, out_dir: Path, env: dict[str, str], cluster: LocalCluster,
         *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score ``inp`` locally and on the cluster; compare the files; both reports."""
    suffix = inp.suffix
    local, ray = out_dir / f"local{suffix}", out_dir / f"ray{suffix}"
    r, local_report = score(bundle, inp, local, env, "--chunk-rows", "100", *args)
    assert r.returncode == 0, r.stderr
    r, ray_report = score(bundle, inp, ray, env, "--chunk-rows", "100", "--ray",
                          cluster.address, *args)
    assert r.returncode == 0, r.stderr
    if suffix == ".parquet":
        assert pq.read_table(ray).equals(pq.read_table(local))
    else:
        assert ray.read_bytes() == local.read_bytes()
    dead = [_timeless(read_jsonl(p.with_suffix(".dead-letter.jsonl"))) for p in (local, ray)]
    assert dead[0] and dead[1] == dead[0]
    assert _steady(ray_report) == _steady(local_report)
    return local_report, ray_report


def _timeless(dead: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters less what differs between two runs: when, and which worker process."""
    return [{k: re.sub(r"worker \d+", "worker PID", v) if k == "message" else v
             for k, v in d.items() if k != "time"} for d in dead]


def _steady(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def assert_both_nodes(report: dict[str, Any], cluster: LocalCluster) -> None:
    where = report["cluster"]
    assert where["address"] == cluster.address and where["nodes"] == 2
    actors = where["actors"]
    assert len({a["node"] for a in actors}) == 2
    assert all(a["rows"] > 0 for a in actors), actors  # both nodes scored
    assert sum(a["workers"] for a in actors) == report["workers"]


def test_csv_on_the_cluster_equals_local(ray_cluster: LocalCluster, env: dict[str, str],
                                         tmp_path: Path) -> None:
    rows: list[Any] = penguins(1200)
    raw = [["" if r[c] is None else str(r[c]) for c in COLUMNS] for r in rows]
    raw[17][2] = "long"  # a word in a number column: the rest of the file is read as text
    raw[30] = ["Dream", "male", "40.1"]  # three cells instead of seven
    raw[60][5] = "NA"  # a null token
    inp = write_csv(tmp_path / "in.csv", raw, header=COLUMNS)
    local, ray = both(EXAMPLE, inp, tmp_path, env, ray_cluster)
    assert local["dead_by_stage"] == {"contract": 3, "decode": 1}
    assert ray["rows_in"] == 1200 and ray["scored"] == 1196
    assert_both_nodes(ray, ray_cluster)


def test_jsonl_on_the_cluster_equals_local(ray_cluster: LocalCluster, env: dict[str, str],
                                           tmp_path: Path) -> None:
    lines: list[Any] = penguins(1000)
    lines[12] = "{not json"
    lines[13]["bill_depth_mm"] = "deep"
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    local, ray = both(EXAMPLE, inp, tmp_path, env, ray_cluster, "--id-column", "penguin")
    assert local["dead_lettered"] == 4 and ray["scored"] == 996
    assert_both_nodes(ray, ray_cluster)


def test_parquet_on_the_cluster_equals_local(ray_cluster: LocalCluster, env: dict[str, str],
                                             tmp_path: Path) -> None:
    inp = write_parquet(tmp_path / "in.parquet", penguins(1500))
    local, ray = both(EXAMPLE, inp, tmp_path, env, ray_cluster, "--id-column", "penguin")
    assert local["dead_by_stage"] == {"contract": 2} and ray["chunks"] == 15
    assert pq.read_table(tmp_path / "ray.parquet").column_names[0] == "penguin"
    assert_both_nodes(ray, ray_cluster)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose inputs choose its failures: x=13 raises, x=66 kills its worker, x=99
    breaks the output contract (tests/scoring/conftest.py)."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "scorer", name="scorer",
                        code=SCORER_CODE, contract=SCORER_CONTRACT)


def test_rows_the_model_fails_on_are_isolated_on_the_nodes(
        ray_cluster: LocalCluster, env: dict[str, str], scorer: Path, tmp_path: Path) -> None:
    rows = good_rows(400)
    for i, x in ((33, 13.0), (150, 66.0), (260, 99.0)):
        rows[i]["x"] = x
    inp = write_csv(tmp_path / "in.csv", rows)
    local, ray = both(scorer, inp, tmp_path, env, ray_cluster, "--chunk-rows", "50")
    assert local["dead_by_stage"] == {"model": 2, "output_contract": 1}
    dead = read_jsonl(tmp_path / "ray.dead-letter.jsonl")
    assert [(d["row"], d["code"]) for d in dead] == [
        (33, "MODEL_ERROR"), (150, "WORKER_CRASHED"), (260, "OUTPUT_CONTRACT_VIOLATION")]
    assert dead[2]["violations"][0]["field"] == "y"
    assert_both_nodes(ray, ray_cluster)


# -- Refusals --------------------------------------------------------------------------------

def test_no_cluster_at_the_address_is_a_clear_error(env: dict[str, str],
                                                    tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", penguins(400))
    address = f"127.0.0.1:{free_port()}"
    r, _ = score(EXAMPLE, inp, tmp_path / "out.jsonl", env, "--ray", address)
    assert r.returncode == 1
    assert f"no Ray cluster at {address}" in r.stderr and "RAY_UNREACHABLE" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.dead-letter.jsonl").exists()


def test_without_ray_installed_the_error_says_what_to_install(env: dict[str, str],
                                                              tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", penguins(400))
    no_ray = ("import sys, importlib.abc\n"
              "class NoRay(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path, target=None):\n"
              "        if name.split('.')[0] == 'ray': raise ModuleNotFoundError(name=name)\n"
              "sys.meta_path.insert(0, NoRay())\n"
              "from baton.cli.main import main\n"
              "main()\n")
    r = subprocess.run([sys.executable, "-c", no_ray, "score", str(EXAMPLE), "--input",
                        str(inp), "--output", str(tmp_path / "out.jsonl"), "--ray",
                        "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "RAY_MISSING" in r.stderr and "pip install 'baton[ray]'" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--ray-actors", "2"], "--ray-actors needs --ray ADDRESS"),
    (["--ray", "127.0.0.1:1", "--registry", "http://127.0.0.1:1"], "--registry and --ray"),
])
def test_options_that_do_not_go_with_ray_are_refused(env: dict[str, str], tmp_path: Path,
                                                      args: list[str], message: str) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", penguins(400))
    r = run_baton("score", EXAMPLE, "--input", inp, "--output", tmp_path / "out.jsonl", *args,
                  env=env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
