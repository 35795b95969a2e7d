"""Batch scoring benchmark: ``baton score`` vs ``mlflow models predict`` vs a hand-written loop.

One command (``.venv/bin/python bench/batch/run.py``):

1. generates a 1,000,000-row CSV of 20 float features (numpy, fixed seed), and a
   10,000,000-row one for the memory check, under build/bench-batch/ (git-ignored);
2. trains a LogisticRegression on ``make_classification(n_features=20)`` and packages it
   with ``baton.package`` (a DataFrame sample: a records contract, fields f0..f19);
3. installs MLflow into its own venv (build/bench-batch/mlflow-venv, not the project's) and
   saves the same fitted model with ``mlflow.sklearn.save_model``;
4. runs each system once to warm caches and write bytecode, then ``--repeat`` times,
   interleaved, measuring wall-clock time and peak memory of the whole process tree (the
   sum of each process's VmHWM, polled every 20 ms; the root's also from getrusage);
5. writes build/bench-batch/results.json and results.md.

The Baton steady-state rate comes from its report (rows / seconds after the workers were
ready); the loop's from its own timer (after imports and model loading).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / "build" / "bench-batch"
BIN = Path(sys.executable).parent
FEATURES = [f"f{i}" for i in range(20)]
MLFLOW_VENV = WORK / "mlflow-venv"
LOOP_CHUNK = 50_000  # the loop's best of 10k / 50k / 200k on this machine

TARGETS = {
    "wall_mlflow_over_baton": 2.0,      # Baton wall-clock >= 2x faster than MLflow
    "peak_baton_over_mlflow": 0.5,      # Baton peak memory <= half of MLflow's
    "steady_baton_over_loop": 0.8,      # Baton steady-state rows/s >= 0.8x the loop's
    "peak_10m_over_1m": 1.2,            # 10M-row peak within 20% of the 1M-row peak
}


def log(msg: str) -> None:
    print(f"[bench-batch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- setup --------------------------------------------------------------------------------

def generate_csv(path: Path, rows: int, seed: int) -> Path:
    """``rows`` rows of 20 floats (6 decimals), written by Arrow in 200k-row slices."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    marker = path.with_suffix(".json")
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == {
            "rows": rows, "seed": seed}:
        return path
    log(f"generating {rows:,} rows -> {path.name}")
    rng = np.random.default_rng(seed)
    schema = pa.schema([(f, pa.float64()) for f in FEATURES])
    tmp = path.with_suffix(".tmp")
    with pcsv.CSVWriter(str(tmp), schema) as writer:
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            x = np.round(rng.normal(0.0, 2.0, (n, len(FEATURES))), 6)
            writer.write_table(pa.table({f: x[:, i] for i, f in enumerate(FEATURES)}))
    tmp.replace(path)
    marker.write_text(json.dumps({"rows": rows, "seed": seed}))
    return path


def train_and_package() -> tuple[Path, Path]:
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    import baton

    x, y = make_classification(n_samples=10_000, n_features=20, random_state=42)
    frame = pd.DataFrame(x, columns=FEATURES)
    model = LogisticRegression(max_iter=500).fit(frame, y)
    pkl = WORK / "model.pkl"
    pkl.write_bytes(pickle.dumps(model, protocol=5))
    bundle = baton.package(model, frame, name="logreg", version="1.0.0",
                           path=WORK / "bundle", overwrite=True)
    return bundle, pkl


def setup_mlflow(pkl: Path) -> Path:
    """MLflow in its own uv venv, with the project's scikit-learn/pandas/numpy pins."""
    import importlib.metadata as md

    python = MLFLOW_VENV / "bin" / "python"
    uv = BIN / "uv"
    if not python.exists():
        log("creating the MLflow venv")
        subprocess.run([str(uv), "venv", "-q", "--python", "3.11", str(MLFLOW_VENV)],
                       check=True)
    pins = [f"{d}=={md.version(d)}" for d in ("scikit-learn", "pandas", "numpy")]
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "mlflow",
                    *pins], check=True)
    model_dir = WORK / "mlflow-model"
    subprocess.run([str(python), str(HERE / "mlflow_save.py"), str(pkl), str(model_dir)],
                   check=True, env=child_env(), capture_output=True)
    return model_dir


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, BATON_HOME=str(WORK / "home"), UV_PYTHON_DOWNLOADS="never",
               **extra)
    # Let every system cache its bytecode (this machine sets PYTHONDONTWRITEBYTECODE):
    # otherwise each start recompiles pandas, scikit-learn and MLflow from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("VIRTUAL_ENV", None)
    return env


# -- measurement --------------------------------------------------------------------------

def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(cmd: list[str], env: dict[str, str], label: str) -> dict[str, Any]:
    """Wall-clock seconds and peak memory of the process tree (sum of per-process VmHWM)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=WORK)
    root = psutil.Process(proc.pid)
    hwm: dict[int, float] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            peak = _vm_hwm_mb(p.pid)
            if peak is not None:
                hwm[p.pid] = max(hwm.get(p.pid, 0.0), peak)
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if after > before:  # the root's own high-water mark, even if it peaked at the end
        hwm[proc.pid] = max(hwm.get(proc.pid, 0.0), after)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return {"wall_s": round(wall, 3), "peak_mb": round(sum(hwm.values()), 1),
            "processes": len(hwm), "stdout": out.decode()[-2000:]}


def baton_cmd(bundle: Path, data: Path, out: Path, report: Path) -> list[str]:
    return [str(BIN / "baton"), "score", str(bundle), "--input", str(data), "--output",
            str(out), "--quiet", "--report", str(report)]


def run_baton(bundle: Path, data: Path, tag: str) -> dict[str, Any]:
    report = WORK / f"baton-{tag}.report.json"
    m = measure(baton_cmd(bundle, data, WORK / f"baton-{tag}.parquet", report), child_env(),
                "baton score")
    r = json.loads(report.read_text())
    m.pop("stdout")
    m.update(steady_rows_per_s=round(r["steady_rows_per_s"]), rows=r["rows_in"],
             scored=r["scored"], startup_s=round(r["startup_seconds"], 3),
             scoring_s=round(r["scoring_seconds"], 3), reported_peak_mb=r["peak_rss_mb"],
             chunk_rows=r["chunk_rows"], workers=r["workers"])
    return m


def run_mlflow(model_dir: Path, data: Path) -> dict[str, Any]:
    env = child_env(PATH=f"{MLFLOW_VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(MLFLOW_VENV / "bin" / "mlflow"), "models", "predict", "-m", str(model_dir),
           "-i", str(data), "-t", "csv", "-o", str(WORK / "mlflow-out.json"),
           "--env-manager", "local"]
    m = measure(cmd, env, "mlflow models predict")
    m.pop("stdout")
    return m


def run_loop(pkl: Path, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "loop.py"), str(pkl), str(data),
           str(WORK / "loop-out.parquet"), str(LOOP_CHUNK)]
    m = measure(cmd, child_env(), "hand-written loop")
    r = json.loads(m.pop("stdout").strip().splitlines()[-1])
    m.update(steady_rows_per_s=round(r["rows_per_s"]), rows=r["rows"],
             scoring_s=round(r["seconds"], 3))
    return m


def check_same_scores() -> None:
    """Baton's probabilities equal the loop's (same model, same rows)."""
    import pyarrow.parquet as pq

    ours = pq.read_table(WORK / "baton-1m.parquet")
    loop = pq.read_table(WORK / "loop-out.parquet")
    assert ours.column("row").to_pylist()[:5] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(ours.column("proba_1").to_numpy(),
                               loop.column("proba_1").to_numpy(), rtol=0, atol=1e-12)


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def spread(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):,.2f}–{max(values):,.2f}" if len(values) > 1 else ""


# -- main ---------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-big", action="store_true", help="no 10M-row memory run")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    data = generate_csv(WORK / "input-1m.csv", args.rows, seed=7)
    bundle, pkl = train_and_package()
    model_dir = setup_mlflow(pkl)
    log("warm-up: one unmeasured run each (bytecode, page cache, Baton's environment)")
    run_baton(bundle, data, "1m")
    run_mlflow(model_dir, data)
    run_loop(pkl, data)

    runs: dict[str, list[dict[str, Any]]] = {"baton": [], "mlflow": [], "loop": []}
    for i in range(args.repeat):
        log(f"round {i + 1}/{args.repeat}")
        runs["baton"].append(run_baton(bundle, data, "1m"))
        runs["mlflow"].append(run_mlflow(model_dir, data))
        runs["loop"].append(run_loop(pkl, data))
        log("  " + "  ".join(f"{k}: {v[-1]['wall_s']:.2f}s {v[-1]['peak_mb']:.0f}MB"
                             for k, v in runs.items()))
    check_same_scores()

    big: dict[str, Any] | None = None
    if not args.skip_big:
        big_data = generate_csv(WORK / "input-10m.csv", args.big_rows, seed=8)
        log(f"baton score on {args.big_rows:,} rows")
        big = run_baton(bundle, big_data, "10m")
        (WORK / "baton-10m.parquet").unlink(missing_ok=True)

    results = summarize(runs, big, args)
    (WORK / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (WORK / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))


def summarize(runs: dict[str, list[dict[str, Any]]], big: dict[str, Any] | None,
              args: argparse.Namespace) -> dict[str, Any]:
    med = {k: {m: median(v, m) for m in ("wall_s", "peak_mb")} for k, v in runs.items()}
    for k in ("baton", "loop"):
        med[k]["steady_rows_per_s"] = median(runs[k], "steady_rows_per_s")
    ratios = {
        "wall_mlflow_over_baton": med["mlflow"]["wall_s"] / med["baton"]["wall_s"],
        "peak_baton_over_mlflow": med["baton"]["peak_mb"] / med["mlflow"]["peak_mb"],
        "steady_baton_over_loop": (med["baton"]["steady_rows_per_s"]
                                   / med["loop"]["steady_rows_per_s"]),
    }
    if big is not None:
        ratios["peak_10m_over_1m"] = big["peak_mb"] / med["baton"]["peak_mb"]
    met = {k: (v >= TARGETS[k] if k in ("wall_mlflow_over_baton", "steady_baton_over_loop")
               else v <= TARGETS[k]) for k, v in ratios.items()}
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import importlib.metadata as md

    mlflow_version = subprocess.run(
        [str(MLFLOW_VENV / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True, text=True, env=child_env()).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "cores": os.cpu_count(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "os": platform.platform()},
        "versions": {"mlflow": mlflow_version, "scikit-learn": md.version("scikit-learn"),
                     "pandas": md.version("pandas"), "pyarrow": md.version("pyarrow"),
                     "numpy": md.version("numpy")},
        "rows": args.rows, "repeat": args.repeat, "runs": runs, "median": med,
        "spread": {k: {m: spread(v, m) for m in ("wall_s", "peak_mb")} for k, v in runs.items()},
        "big": big, "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": TARGETS, "met": met,
    }


def to_markdown(r: dict[str, Any]) -> str:
    med, sp = r["median"], r["spread"]
    lines = [f"Batch scoring, {r['rows']:,} rows x 20 floats; median of {r['repeat']} "
             f"({r['date']}, {r['machine']['cpu']}, {r['machine']['cores']} cores)", "",
             "| system | wall s | peak MB (tree) | steady rows/s |", "|---|---|---|---|"]
    names = {"baton": "baton score", "mlflow": f"mlflow {r['versions']['mlflow']} models "
             "predict", "loop": "hand-written loop"}
    for k, name in names.items():
        steady = med[k].get("steady_rows_per_s")
        lines.append(f"| {name} | {med[k]['wall_s']:.2f} ({sp[k]['wall_s']}) | "
                     f"{med[k]['peak_mb']:,.0f} ({sp[k]['peak_mb']}) | "
                     f"{f'{steady:,.0f}' if steady else '–'} |")
    if r["big"]:
        b = r["big"]
        lines.append(f"| baton score, {b['rows']:,} rows | {b['wall_s']:.2f} | "
                     f"{b['peak_mb']:,.0f} | {b['steady_rows_per_s']:,.0f} |")
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for k, v in r["ratios"].items():
        op = ">=" if k in ("wall_mlflow_over_baton", "steady_baton_over_loop") else "<="
        lines.append(f"| {k} | {v:.2f} | {op} {r['targets'][k]} | "
                     f"{'yes' if r['met'][k] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--clean" in sys.argv:
        shutil.rmtree(WORK, ignore_errors=True)
        sys.exit(0)
    main()
