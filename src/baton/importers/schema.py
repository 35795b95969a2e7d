"""MLflow's signature as a Baton contract, with each decision said in words.

MLflow's column types and Baton's field types, and where they part:

- ``long``/``integer`` become ``integer`` fields that are **never nullable**: in pandas a
  missing value makes an integer column float, and MLflow's schema enforcement refuses a
  float column where the signature says long. ``required: false`` does not change that (in
  MLflow it means the column may be left out, not that a value may be null).
- ``double``/``float`` become ``float`` fields, nullable when the column is ``required:
  false`` (what ``infer_signature`` writes for a column with missing values) or the input
  example holds a null there. MLflow itself never refuses a NaN in a double column, so a
  double column with no sign of missing values is taken as not nullable: the model was not
  shown one.
- ``boolean`` and ``string`` likewise; ``binary``, ``datetime`` and MLflow's nested types
  (array, object, map, any) have no Baton field type and are refused, naming the column.

Each field also records the pandas dtype the model's column is built with (``int64`` for
``long``, ``int32`` for ``integer``, ``float32`` for ``float``): the dtypes the model was
saved with, which MLflow's own loader checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from baton.contract.spec import FieldSpec, TensorSpec
from baton.errors import BundleError
from baton.importers.guard import short

#: MLflow column type -> (Baton field type, the model's pandas dtype).
COLUMN_TYPES: dict[str, tuple[str, str | None]] = {
    "double": ("float", "float64"), "float": ("float", "float32"),
    "long": ("integer", "int64"), "integer": ("integer", "int32"),
    "boolean": ("boolean", "bool"), "string": ("string", None),
}
_REFUSED = {
    "binary": "bytes have no JSON form in a Baton contract",
    "datetime": "Baton contracts have no datetime field (the model would receive strings)",
}
#: numpy dtype names in MLflow's tensor specs -> Open Inference Protocol datatypes.
TENSOR_TYPES = {"float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64",
                "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint64": "UINT64",
                "uint32": "UINT32", "uint16": "UINT16", "uint8": "UINT8", "bool": "BOOL"}


@dataclass(frozen=True)
class Decision:
    """One input field and why it is what it is, for the import's report."""

    field: str
    text: str


def records_fields(columns: list[dict[str, Any]], example: list[dict[str, Any]] | None,
                   file: str = "MLmodel") -> tuple[tuple[FieldSpec, ...], list[Decision]]:
    """Fields for MLflow's column-based signature inputs, checked against the example."""
    specs, decisions = [], []
    for i, col in enumerate(columns):
        name, mtype = col.get("name"), col.get("type")
        where = f"signature.inputs[{i}]"
        if not isinstance(name, str) or not name:
            raise _refuse(file, where, "the column has no name: Baton's records contract "
                          "names every field (save the model with a DataFrame example)")
        if not isinstance(mtype, str) or mtype not in COLUMN_TYPES:
            why = _REFUSED.get(str(mtype), "Baton's records contracts take double, float, "
                               "long, integer, boolean and string columns")
            raise _refuse(file, where, f"column {name!r} is of MLflow type "
                          f"{short(mtype)}: {why}")
        ftype, dtype = COLUMN_TYPES[mtype]
        required = col.get("required", True) is not False
        nulls = _null_rows(example, name)
        if ftype == "integer":
            if nulls:
                raise BundleError(
                    f"the input example has a null in column {name!r} (row {nulls[0]}) but "
                    f"{file}'s signature declares it {mtype}: MLflow cannot take a missing "
                    "value in an integer column (pandas makes it float, which MLflow refuses); "
                    "declare it double (infer_signature on data with the missing values "
                    "does) and save the model again", code="MLFLOW_NULLABLE_INTEGER",
                    details={"file": file, "field": where, "column": name})
            why = (f"{mtype} → integer, not nullable: MLflow cannot take a missing value in an "
                   "integer column" + ("; required: false only lets MLflow callers leave the "
                                       "column out" if not required else ""))
            specs.append(FieldSpec(name, ftype, False, dtype=dtype))
        else:
            nullable = not required or bool(nulls)
            reason = ("required: false" if not required else
                      f"the input example has a null in row {nulls[0]}" if nulls else
                      "required, and no null in the input example")
            if nullable and dtype == "bool":
                dtype = None  # built as objects, so the column can hold the null
            why = f"{mtype} → {ftype}, {'nullable' if nullable else 'not nullable'} ({reason})"
            specs.append(FieldSpec(name, ftype, nullable, dtype=dtype))
        decisions.append(Decision(name, why))
    return tuple(specs), decisions


def inferred_fields(example: list[dict[str, Any]],
                    file: str) -> tuple[tuple[FieldSpec, ...], list[Decision]]:
    """Fields inferred from the input example's values, for a model without a signature."""
    names = list(dict.fromkeys(k for row in example for k in row))
    specs, decisions = [], []
    for name in names:
        values = [row.get(name) for row in example]
        present = [v for v in values if v is not None]
        nullable = len(present) < len(values)
        if not present:
            raise BundleError(f"{file}: column {name!r} is null in every row of the example: "
                              "its type cannot be inferred; save the model with a signature",
                              code="MLFLOW_NO_SIGNATURE", details={"file": file,
                                                                   "column": name})
        kinds = {type(v) for v in present}
        if kinds == {bool}:
            ftype, dtype = "boolean", (None if nullable else "bool")
        elif kinds <= {int} and not nullable:
            ftype, dtype = "integer", "int64"
        elif kinds <= {int, float}:
            ftype, dtype = "float", "float64"  # pandas makes an int column with a null float
        elif kinds == {str}:
            ftype, dtype = "string", None
        else:
            raise BundleError(f"{file}: column {name!r} mixes "
                              f"{', '.join(sorted(k.__name__ for k in kinds))} values; save "
                              "the model with a signature", code="MLFLOW_NO_SIGNATURE",
                              details={"file": file, "column": name})
        how = "nullable (a null in the example)" if nullable else "not nullable"
        specs.append(FieldSpec(name, ftype, nullable, dtype=dtype))
        decisions.append(Decision(name, f"inferred from {file}: {ftype}, {how}"))
    return tuple(specs), decisions


def tensor_input(specs: list[dict[str, Any]], file: str = "MLmodel") -> TensorSpec:
    """The one input tensor of a tensor-based signature (the only kind mapped)."""
    if len(specs) != 1:
        raise _refuse(file, "signature.inputs", f"{len(specs)} tensors: only a signature of "
                      "one input tensor becomes a tensors contract")
    spec = specs[0]
    t = spec.get("tensor-spec") if spec.get("type") == "tensor" else None
    dtype = t.get("dtype") if isinstance(t, dict) else None
    shape = t.get("shape") if isinstance(t, dict) else None
    if not isinstance(dtype, str) or dtype not in TENSOR_TYPES:
        raise _refuse(file, "signature.inputs[0]", f"tensor dtype {short(dtype)} has no Open "
                      f"Inference Protocol datatype here ({', '.join(TENSOR_TYPES)})")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _refuse(file, "signature.inputs[0]", f"tensor shape {short(shape)} is not a list of "
                      "sizes")
    name = spec.get("name") if isinstance(spec.get("name"), str) else "input-0"
    return TensorSpec(str(name), TENSOR_TYPES[dtype], tuple(d if d > 0 else -1 for d in shape))


def is_tensor_signature(columns: list[dict[str, Any]]) -> bool:
    return any(c.get("type") == "tensor" for c in columns)


def output_fields(columns: list[dict[str, Any]] | None) -> list[tuple[str, str | None, bool]]:
    """(name, Baton type or None, nullable) per signature output; an unnamed single
    output (a list, a Series or a 1-D array) is ``prediction``. Empty when the signature
    says nothing usable: the outputs are then read from what the model returns."""
    if not columns:
        return []
    out = []
    for i, col in enumerate(columns):
        name = col.get("name") if isinstance(col.get("name"), str) else None
        if col.get("type") == "tensor":
            t = col.get("tensor-spec")
            shape = t.get("shape") if isinstance(t, dict) else None
            if len(columns) != 1 or not isinstance(shape, list) or len(shape) != 1:
                return []
            assert isinstance(t, dict)
            dt = str(t.get("dtype", ""))
            kind = ("float" if dt.startswith("float") else "integer" if "int" in dt
                    else "boolean" if dt == "bool" else "string" if dt in ("str", "object")
                    else None)
            out.append((name or "prediction", kind, False))
            continue
        if name is None and len(columns) > 1:
            name = f"prediction_{i}"
        mapped = COLUMN_TYPES.get(str(col.get("type")))
        out.append((name or "prediction", mapped[0] if mapped else None,
                    col.get("required", True) is False))
    return out


def _null_rows(example: list[dict[str, Any]] | None, name: str) -> list[int]:
    return [i for i, row in enumerate(example or []) if name in row and row[name] is None]


def _refuse(file: str, where: str, why: str) -> BundleError:
    return BundleError(f"{file}: {where}: {why}", code="MLFLOW_UNSUPPORTED",
                       details={"file": file, "field": where})
