"""Each runner on the benchmark model, as ``baton check`` measures it (issue 14's figures).

The model of ``make bench`` (LogisticRegression on make_classification(2000, 20)) and the
GradientBoosting model beside it, each packaged twice from the same fitted object: pickled
for the Python runner (scikit-learn in its environment) and converted with skl2onnx for the
ONNX runner (onnxruntime and numpy). ``baton check --iterations N`` then gives, per bundle:
start-up to the first prediction (the worker's start and load), 1-row and 100-row latency,
the worker's memory, and how far the ONNX outputs land from the original's.

The R runner is measured on the example R bundle (examples/iris-r: randomForest, 50 trees,
on R's iris), beside the same kind of model in Python (scikit-learn's RandomForestClassifier,
50 trees, on the same 150 rows) on the Python runner.

    .venv/bin/python bench/runners.py [--iterations 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def models() -> dict[str, tuple[Any, Any]]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2000, n_features=20, random_state=42)
    return {"logreg": (LogisticRegression().fit(x, y), x),
            "gboost": (GradientBoostingClassifier(random_state=0).fit(x, y), x)}


def iris_forest(work: Path) -> Path:
    """R's iris (the example R bundle's data, from its R) and scikit-learn's random forest of
    the same size, packaged for the Python runner."""
    import io

    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    import baton

    text = subprocess.run(["Rscript", "--vanilla", "-e", "write.csv(iris, stdout(), "
                           "row.names = FALSE)"], capture_output=True, text=True,
                          check=True).stdout
    iris = pd.read_csv(io.StringIO(text))
    x, y = iris.drop(columns="Species"), iris["Species"]
    model = RandomForestClassifier(n_estimators=50, random_state=42).fit(x, y)
    return baton.package(model, x.iloc[::15], name="iris-rf-python",
                         path=work / "iris-rf-python")


def check(bundle: Path, iterations: int, env: dict[str, str]) -> dict[str, Any]:
    report = Path(tempfile.mkdtemp(prefix="bench-check-")) / "check.json"  # not in the bundle's
    # folder: the example R bundle is in the repository
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "baton", "check", str(bundle), "--report",
                           str(report), "--iterations", str(iterations)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"baton check {bundle.name} failed:\n{done.stdout}{done.stderr}")
    out: dict[str, Any] = json.loads(report.read_text())
    out["wall_seconds"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    args = parser.parse_args()
    import baton

    work = Path(tempfile.mkdtemp(prefix="bench-runners-"))
    env = dict(os.environ, BATON_HOME=str(work / "home"), BATON_WORKERS="1")
    rows = []
    bundles = []
    for name, (model, x) in models().items():
        for fmt, runner in (("pickle", "python"), ("onnx", "onnx")):
            bundles.append((name, runner, baton.package(
                model, x, name=f"{name}-{runner}", format=fmt, path=work / f"{name}-{runner}")))
    bundles += [("iris-rf", "python", iris_forest(work)),
                ("iris-rf", "r", ROOT / "examples" / "iris-r" / "bundle")]
    for name, runner, bundle in bundles:
        check(bundle, 10, env)  # builds the environment: not part of the figures
        r = check(bundle, args.iterations, env)
        m = r["measurements"]
        lat = m["latency"]
        rows.append((name, runner, m["load_seconds"], lat["rows_1"]["p50_ms"],
                     lat["rows_1"]["p99_ms"], lat["rows_100"]["p50_ms"],
                     lat["rows_100"]["p99_ms"], m["memory_mb"]["worker_peak_rss_mb"],
                     m.get("sample_largest_difference")))
    print(f"{'model':8} {'runner':7} {'load s':>7} {'1-row p50':>10} {'1-row p99':>10} "
          f"{'100-row p50':>12} {'100-row p99':>12} {'peak RSS MB':>11} {'largest diff':>13}")
    for name, runner, load, p50, p99, p50h, p99h, mem, diff in rows:
        print(f"{name:8} {runner:7} {load:7.3f} {p50:8.3f}ms {p99:8.3f}ms {p50h:10.3f}ms "
              f"{p99h:10.3f}ms {mem:11.1f} {diff if diff is not None else '-':>13}")


if __name__ == "__main__":
    main()
