"""Train a penguin species classifier and package it as a Baton bundle.

    python examples/penguins/train.py [OUTPUT_DIR]

The data ships inside the `palmerpenguins` package (no download). The pipeline imputes
missing values, one-hot encodes the categorical columns, scales the numeric ones and fits
a logistic regression. `baton.package` infers the contract from the training sample, pins
the exact library versions from this environment, and stores sample rows with the model's
outputs so that `baton check` can prove the bundle reproduces them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from palmerpenguins import load_penguins
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import baton

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]


def train() -> tuple[object, object, float]:
    data = load_penguins()
    data = data[data["species"].notna()]
    X, y = data[CATEGORICAL + NUMERIC + ["year"]], data["species"]
    X = X.astype({"year": "int64"})
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=7,
                                                        stratify=y)
    features = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
        ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                      OneHotEncoder(handle_unknown="ignore")), CATEGORICAL),
    ])
    model = make_pipeline(features, LogisticRegression(max_iter=1000))
    model.fit(X_train, y_train)
    return model, X_train, model.score(X_test, y_test)


def main(out: Path) -> Path:
    model, X_train, accuracy = train()
    path = baton.package(
        model, sample=X_train, name="penguins", version="1.0.0", path=out,
        description=f"Penguin species from island, sex and body measurements "
                    f"(logistic regression, test accuracy {accuracy:.3f})",
        owner="data-science@example.com", sample_rows=20, overwrite=True)
    print(f"bundle written to {path} (test accuracy {accuracy:.3f})")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "bundle")
