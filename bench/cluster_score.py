"""Batch scoring on a Ray cluster: ``baton score --ray`` on one node and on two, against local
``baton score``, on the same file, in one run.

``.venv/bin/python bench/cluster_score.py`` (about 2 minutes on 2 cores):

1. generates a penguins-like CSV (``--rows``, default 5,000,000; fixed seed; the example
   bundle's seven input fields, 1 row in 10,000 with an island the contract does not know,
   so dead letters are part of the job) under build/bench-cluster-score/ (git-ignored);
2. scores it once locally to build (or find) the bundle's environment, then, measured:
   local ``baton score``; ``--ray`` on a :class:`~baton.cluster.local.LocalCluster` of one
   node (``workers=0``); ``--ray`` on one of two nodes (``workers=1``), each cluster started
   for its run and stopped after it; every run with ``--workers`` worker processes per
   actor (default 1) and the same chunk size;
3. records each run's report (rows/s over the whole job and after start-up), the CPU
   seconds of the driver process (its own, not its children's) and of the whole machine
   (``psutil.cpu_times``) while it scored (the report's window after start-up, sampled
   every 50 ms), and checks that every run wrote the same scores;
4. prints a table, the ratios and what they predict for a cluster of separate machines,
   and writes build/bench-cluster-score/results.json.

The machine's cores are shared by everything here: the driver, the Ray nodes, their actors
and workers. Two nodes on one machine therefore cannot beat one; the CPU seconds per row of
the driver and of the nodes are what carry over to real machines (see ``predict``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from baton.cluster.local import LocalCluster, ray_environment  # noqa: E402

ROOT = benchlib.ROOT
WORK = ROOT / "build" / "bench-cluster-score"
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
BATON = [sys.executable, "-m", "baton"]


def log(msg: str) -> None:
    print(f"[cluster-score {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_input(rows: int, seed: int = 7) -> Path:
    """The CSV (written once per ``rows`` and ``seed``)."""
    path = WORK / f"penguins-{rows}.csv"
    marker = path.with_suffix(".json")
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == {
            "rows": rows, "seed": seed}:
        return path
    log(f"writing {rows:,} rows to {path}")
    rng = np.random.default_rng(seed)
    islands = np.array(["Biscoe", "Dream", "Torgersen"])[rng.integers(0, 3, rows)]
    islands[::10_000] = "Atlantis"  # dead letters, as real files have
    sex = np.array(["female", "male", ""])[rng.integers(0, 3, rows)]
    numbers = [rng.normal(mu, sd, rows).round(1) for mu, sd in
               ((44.0, 5.5), (17.2, 2.0), (201.0, 14.0), (4200.0, 800.0))]
    year = rng.integers(2007, 2010, rows)
    WORK.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("island,sex,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,"
                "year\n")
        for start in range(0, rows, 100_000):
            end = min(rows, start + 100_000)
            f.writelines(f"{i},{s},{a},{b},{c},{d},{y}\n" for i, s, a, b, c, d, y in zip(
                islands[start:end], sex[start:end], *(n[start:end] for n in numbers),
                year[start:end], strict=True))
    marker.write_text(json.dumps({"rows": rows, "seed": seed}))
    return path


def score(name: str, data: Path, env: dict[str, str], args: argparse.Namespace,
          *extra: str) -> dict[str, Any]:
    """One ``baton score``: its report, and the CPU the driver process and the whole
    machine spent while it scored (its report's window after start-up)."""
    out = WORK / f"{name}.csv"
    report = WORK / f"{name}.report.json"
    report.unlink(missing_ok=True)
    cmd = [*BATON, "score", str(BUNDLE), "--input", str(data), "--output", str(out),
           "--report", str(report), "--workers", str(args.workers), "--quiet", *extra]
    if args.chunk_rows:
        cmd += ["--chunk-rows", str(args.chunk_rows)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    samples = _sample(proc)
    stderr = proc.stderr.read() if proc.stderr else ""
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    rep = json.loads(report.read_text())
    # The report's clock starts once the command runs (after Python's start): place its
    # scoring window by its end, the last sample before the process exited.
    end = samples[-1][0] - (rep["seconds"] - rep["startup_seconds"] - rep["scoring_seconds"])
    window = (end - rep["scoring_seconds"], end)
    driver_cpu, machine_cpu = (_between(samples, window, k) for k in (2, 1))
    rows = rep["rows_in"]
    result = {"name": name, "wall_s": round(wall, 2), "rows": rows,
              "scored": rep["scored"], "dead_lettered": rep["dead_lettered"],
              "seconds": round(rep["seconds"], 2), "startup_s": round(rep["startup_seconds"], 2),
              "rows_per_s": round(rep["rows_per_s"]),
              "steady_rows_per_s": round(rep["steady_rows_per_s"]),
              "workers": rep["workers"], "chunk_rows": rep["chunk_rows"],
              "steady_driver_cpu_us_per_row": round(driver_cpu / rows * 1e6, 2),
              "steady_machine_cpu_us_per_row": round(machine_cpu / rows * 1e6, 2),
              "scores_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
              "peak_rss_mb": rep["peak_rss_mb"]}
    if "cluster" in rep:
        result["nodes"] = rep["cluster"]["nodes"]
        result["rows_by_actor"] = [a["rows"] for a in rep["cluster"]["actors"]]
    log(f"{name}: {result['rows_per_s']:,} rows/s ({result['steady_rows_per_s']:,} after "
        f"{result['startup_s']} s of start-up); while scoring, per row: driver "
        f"{result['steady_driver_cpu_us_per_row']} µs CPU, machine "
        f"{result['steady_machine_cpu_us_per_row']} µs CPU")
    return result


def _sample(proc: subprocess.Popen[str]) -> list[tuple[float, float, float]]:
    """(time, the machine's busy CPU seconds, the driver's own CPU seconds) every 50 ms
    until ``proc`` exits."""
    me = psutil.Process(proc.pid)
    samples: list[tuple[float, float, float]] = []
    while proc.poll() is None:
        try:
            t = me.cpu_times()
            samples.append((time.perf_counter(), benchlib._busy(psutil.cpu_times()),
                            t.user + t.system))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return samples


def _between(samples: list[tuple[float, float, float]], window: tuple[float, float],
             k: int) -> float:
    """How much sample field ``k`` grew over ``window`` (nearest samples)."""
    def at(t: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - t))[k]

    return at(window[1]) - at(window[0])


def measure(name: str, nodes: int, data: Path, env: dict[str, str],
            args: argparse.Namespace) -> dict[str, Any]:
    """Score ``data`` locally (``nodes`` 0) or on a fresh cluster of ``nodes`` nodes."""
    if not nodes:
        return score(name, data, env, args)
    # Under /tmp: Ray's socket paths inside the folder must stay short.
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix=f"baton-bench-{name}-")),
                           base=args.base, cpus=args.cpus)
    log(f"starting a cluster of {nodes} node(s) at {cluster.address}")
    try:
        cluster.start(workers=nodes - 1)
        return score(name, data, env, args, "--ray", cluster.address)
    finally:
        cluster.stop()


def predict(one: dict[str, Any], cores: int) -> dict[str, Any]:
    """What the one-node run says for N separate machines of ``cores`` cores each.

    The driver reads, checks and writes every row in one process: its CPU per row bounds the
    job at ``1 / driver`` rows/s, whatever the cluster. The rest of the machine's CPU per row
    (actors, workers, Ray's transfer) is the nodes' share: a node of C cores scores about
    ``C / node`` rows/s. So N nodes give about ``min(N * C / node, 1 / driver)``.
    """
    driver = one["steady_driver_cpu_us_per_row"] / 1e6
    node = one["steady_machine_cpu_us_per_row"] / 1e6 - driver
    per_node = cores / node if node > 0 else 0.0
    ceiling = 1 / driver if driver > 0 else 0.0
    return {"driver_cpu_us_per_row": one["steady_driver_cpu_us_per_row"],
            "node_cpu_us_per_row": round(node * 1e6, 2),
            "driver_ceiling_rows_per_s": round(ceiling),
            f"node_of_{cores}_cores_rows_per_s": round(per_node),
            "nodes_to_reach_driver_ceiling": round(ceiling / per_node, 1) if per_node else None,
            "predicted_rows_per_s": {n: round(min(n * per_node, ceiling)) for n in (1, 2, 4, 8)}}


def to_table(runs: list[dict[str, Any]], ratios: dict[str, float],
             pred: dict[str, Any]) -> str:
    lines = ["| run | nodes | workers | rows/s (whole job) | rows/s (after start-up) | "
             "start-up s | driver CPU µs/row | machine CPU µs/row |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r.get('nodes', '-')} | {r['workers']} | "
                     f"{r['rows_per_s']:,} | {r['steady_rows_per_s']:,} | {r['startup_s']} | "
                     f"{r['steady_driver_cpu_us_per_row']} | "
                     f"{r['steady_machine_cpu_us_per_row']} |")
    lines += ["", *(f"- {k}: {v}" for k, v in ratios.items()),
              *(f"- {k}: {v}" for k, v in pred.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000,
                    help="rows of the file (1M score in about 2 s here: too short a window)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per actor "
                    "(and of the local run)")
    ap.add_argument("--chunk-rows", type=int, default=0, help="0: baton score's default")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs each Ray node declares")
    ap.add_argument("--base", type=int, default=26000, help="the clusters' first port")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="wait up to S seconds for the machine to go quiet before each run")
    args = ap.parse_args()
    data = make_input(args.rows)
    env = {**ray_environment(), "BATON_HOME": str(WORK / "home")}
    env.pop("VIRTUAL_ENV", None)
    log("warm-up: building or finding the bundle's environment")
    score("warm-up", make_input(20_000), env, args)
    runs = []
    for name, nodes in (("local", 0), ("ray-1-node", 1), ("ray-2-nodes", 2)):
        quiet = benchlib.wait_for_quiet(args.quiet_wait) if args.quiet_wait else {}
        runs.append({**measure(name, nodes, data, env, args), **quiet})
    local, one, two = runs
    same = len({r["scores_sha256"] for r in runs}) == 1
    ratios = {"same_scores_in_every_run": same,
              "ray_1_node_over_local_whole_job": round(one["rows_per_s"] / local["rows_per_s"], 2),
              "ray_1_node_over_local_steady": round(one["steady_rows_per_s"]
                                                    / local["steady_rows_per_s"], 2),
              "ray_2_nodes_over_1_node_steady": round(two["steady_rows_per_s"]
                                                      / one["steady_rows_per_s"], 2)}
    cores = psutil.cpu_count() or 1
    pred = predict(one, cores)
    results = {"machine": benchlib.machine(), "source": benchlib.source_state(),
               "args": vars(args), "runs": runs, "ratios": ratios, "prediction": pred}
    (WORK / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_table(runs, ratios, pred)
    (WORK / "results.md").write_text(table)
    print(table)
    if not same:
        raise SystemExit("the runs wrote different scores")


if __name__ == "__main__":
    main()
