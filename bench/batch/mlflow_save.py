"""Save the benchmark's model as an MLflow model (run with the MLflow venv's interpreter).

``mlflow_save.py MODEL.pkl DEST``: the same fitted LogisticRegression Baton packages.
"""

from __future__ import annotations

import pickle
import shutil
import sys

import mlflow.sklearn


def main(model_path: str, dest: str) -> None:
    with open(model_path, "rb") as f:
        model = pickle.load(f)
    shutil.rmtree(dest, ignore_errors=True)
    mlflow.sklearn.save_model(model, dest)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
