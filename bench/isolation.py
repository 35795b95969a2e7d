"""What isolation costs: the example bundle's start+load and latency under ``process``,
``sandbox`` and ``sandbox`` with every per-worker limit (docs/isolation.md).

    .venv/bin/python bench/isolation.py [--runs 5]

Each mode runs ``baton check`` on the example bundle ``--runs`` times, alternating modes so
machine noise falls on all of them alike, and reports medians: start+load (spawning the
worker, bwrap and its namespaces included, and loading the model), and the p50/p99 of 200
calls of 1 row and of 100 rows. Ratios are against ``process``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
MODES = {
    "process": {},
    "sandbox": {"BATON_ISOLATION": "sandbox"},
    "sandbox + limits": {"BATON_ISOLATION": "sandbox", "BATON_WORKER_MEMORY_MB": "1024",
                         "BATON_WORKER_CPUS": "1", "BATON_WORKER_OPEN_FILES": "256",
                         "BATON_WORKER_PROCESSES": "64"},
}


def check(env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "baton", "check", str(BUNDLE), "--report",
                        str(report)], env={**os.environ, **env}, check=True,
                       capture_output=True)
        m = json.loads(report.read_text())["measurements"]
    lat = m["latency"]
    return {"load_s": m["load_seconds"], "p50_1": lat["rows_1"]["p50_ms"],
            "p99_1": lat["rows_1"]["p99_ms"], "p50_100": lat["rows_100"]["p50_ms"],
            "p99_100": lat["rows_100"]["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    check({})  # the environment built once, outside the figures
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):
        for mode, env in MODES.items():
            results[mode].append(check(env))
    base = {k: statistics.median(r[k] for r in results["process"]) for k in results["process"][0]}
    print(f"{'mode':<18} {'start+load s':>12} {'p50 1 row':>10} {'p99 1 row':>10} "
          f"{'p50 100':>9} {'p99 100':>9}   ratios to process (load, p50 1, p50 100)")
    for mode, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{mode:<18} {med['load_s']:>12.3f} {med['p50_1']:>8.2f}ms {med['p99_1']:>8.2f}ms "
              f"{med['p50_100']:>7.2f}ms {med['p99_100']:>7.2f}ms   "
              f"{med['load_s'] / base['load_s']:.2f} {med['p50_1'] / base['p50_1']:.2f} "
              f"{med['p50_100'] / base['p50_100']:.2f}")


if __name__ == "__main__":
    main()
