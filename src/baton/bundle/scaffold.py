"""``baton init``: a working bundle with a custom Python model, to edit."""

from __future__ import annotations

import json
from pathlib import Path

from baton.errors import BundleError

_MANIFEST = '''[bundle]
name = "{name}"
version = "0.1.0"
description = "A custom Python model: edit model/predict.py"
owner = ""

[model]
runner = "python"
entrypoint = "model.predict:Model"

[environment]
python = "3.11"
# Exact pins only (name==version), e.g. "numpy==2.1.3". This model needs none.
requirements = []

[samples]
input = "samples/input.json"
expected = "samples/expected.json"
tolerance = 1e-9

[serving]
# Left out, the engine decides: workers from measured memory, the timeout from a check.
# workers = 2

[contract]
kind = "records"
unknown_fields = "reject"

[[contract.inputs]]
name = "amount"
type = "float"
min = 0.0

[[contract.inputs]]
name = "country"
type = "string"
categories = ["DE", "FR", "US"]

[[contract.inputs]]
name = "age"
type = "integer"
nullable = true
min = 0
max = 150

[[contract.outputs]]
name = "score"
type = "float"
min = 0.0
max = 1.0
'''

_CODE = '''"""A model Baton can serve: a class with load(bundle_dir) and predict(inputs).

predict() receives one batch: a pandas DataFrame when pandas is installed in the model's
environment, otherwise a dict of columns (lists). It returns a DataFrame or a dict of
output columns, one value per input row.
"""

RISK = {"DE": 0.1, "FR": 0.2, "US": 0.3}


class Model:
    def load(self, bundle_dir):
        self.scale = 1000.0

    def predict(self, inputs):
        scores = []
        for amount, country, age in zip(inputs["amount"], inputs["country"], inputs["age"]):
            young = 0.2 if age is not None and age < 25 else 0.0
            scores.append(min(1.0, amount / self.scale * 0.5 + RISK[country] + young))
        return {"score": scores}
'''

_INPUT = [{"amount": 120.0, "country": "DE", "age": 41},
          {"amount": 900.0, "country": "US", "age": None},
          {"amount": 10.5, "country": "FR", "age": 19}]
_EXPECTED = [{"score": 0.16}, {"score": 0.75}, {"score": 0.40525}]


def scaffold(directory: Path, name: str) -> Path:
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise BundleError(f"{directory} exists and is not empty", code="TARGET_EXISTS")
    (directory / "model").mkdir(parents=True, exist_ok=True)
    (directory / "samples").mkdir(exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name.lower()).strip("-._")
    (directory / "baton.toml").write_text(_MANIFEST.format(name=safe or "model"))
    (directory / "model" / "__init__.py").write_text("")
    (directory / "model" / "predict.py").write_text(_CODE)
    (directory / "samples" / "input.json").write_text(json.dumps(_INPUT, indent=1) + "\n")
    (directory / "samples" / "expected.json").write_text(json.dumps(_EXPECTED, indent=1) + "\n")
    return directory
