"""Infer a contract from a sample: a pandas DataFrame (records) or a numpy array (tensors)."""

from __future__ import annotations

from typing import Any

import numpy as np

from baton.contract.spec import FRAME_DTYPES, TENSOR_DATATYPES, FieldSpec, TensorSpec
from baton.errors import ContractError

#: String columns with at most this many distinct values get their categories enforced.
MAX_INFERRED_CATEGORIES = 50

_NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in TENSOR_DATATYPES.items() if v != "object"}


def infer_fields(frame: Any, *, max_categories: int = MAX_INFERRED_CATEGORIES,
                 ranges: bool = False) -> tuple[FieldSpec, ...]:
    """One :class:`FieldSpec` per column of a pandas DataFrame.

    Types come from the dtypes; a field is nullable when the sample has missing values;
    string columns with few distinct values, and categorical columns, get their categories.
    Ranges are inferred only with ``ranges=True``: a training sample's extremes are rarely
    the limits of valid production data.
    """
    import pandas as pd
    from pandas.api import types as ptypes

    specs = []
    for name in frame.columns:
        col = frame[name]
        nullable = bool(col.isna().any())
        where = f"column {name!r}"
        if not isinstance(name, str):
            raise ContractError(f"{where}: column names must be strings")
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = tuple(c.item() if hasattr(c, "item") else c for c in col.cat.categories)
            ftype = "integer" if ptypes.is_integer_dtype(col.cat.categories.dtype) else "string"
            if ftype == "string" and not all(isinstance(c, str) for c in cats):
                raise ContractError(f"{where} is categorical with {col.cat.categories.dtype} "
                                    "categories; a contract takes string or integer categories "
                                    "only: convert them before packaging")
            specs.append(FieldSpec(name, ftype, nullable, categories=cats, dtype="category"))
        elif ptypes.is_bool_dtype(col.dtype):
            specs.append(FieldSpec(name, "boolean", nullable, dtype=_dtype(col, "boolean")))
        elif ptypes.is_integer_dtype(col.dtype) or ptypes.is_float_dtype(col.dtype):
            ftype = "integer" if ptypes.is_integer_dtype(col.dtype) else "float"
            lo = hi = None
            if ranges and col.notna().any():
                lo, hi = (col.min().item(), col.max().item())
            specs.append(FieldSpec(name, ftype, nullable, min=lo, max=hi,
                                   dtype=_dtype(col, ftype)))
        elif ptypes.is_string_dtype(col.dtype) or ptypes.is_object_dtype(col.dtype):
            present = col.dropna()
            if not all(isinstance(v, str) for v in present):
                raise ContractError(f"{where} mixes strings with other values; "
                                    "convert it to one type before packaging")
            uniques = sorted(set(present))
            found = tuple(uniques) if 0 < len(uniques) <= max_categories else None
            specs.append(FieldSpec(name, "string", nullable, categories=found,
                                   dtype=_dtype(col, "string")))
        else:
            raise ContractError(f"{where} has dtype {col.dtype}, which a contract cannot "
                                "express yet; convert it to numbers or strings")
    return tuple(specs)


def _dtype(col: Any, ftype: str) -> str | None:
    """The dtype to rebuild the column with, as the model saw it in the sample.

    An ``object`` column is recorded only when its missing values are ``None``: one whose
    missing values are NaN (``read_csv`` under pandas 2) is the default for strings. A dtype
    a contract cannot name (``float16``) leaves the type's default.
    """
    name = str(col.dtype)
    if name == "object":
        return "object" if any(v is None for v in col[col.isna()]) else None
    return name if name in FRAME_DTYPES[ftype] else None


def infer_tensor(array: Any, name: str = "input-0") -> TensorSpec:
    """A :class:`TensorSpec` for a numpy array whose first axis is the batch axis."""
    arr = np.asarray(array)
    datatype = _NUMPY_TO_V2.get(arr.dtype.name)
    if datatype is None:
        raise ContractError(f"array dtype {arr.dtype} has no Open Inference Protocol datatype")
    return TensorSpec(name, datatype, (-1, *arr.shape[1:]))
