"""Inferring a contract from a training sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from baton.contract.infer import MAX_INFERRED_CATEGORIES, infer_fields, infer_tensor
from baton.contract.spec import FieldSpec, TensorSpec
from baton.errors import ContractError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "length": [1.5, 2.5, 4.0, 3.0],
        "length_gaps": [1.5, np.nan, 4.0, 3.0],
        "count": np.array([3, 1, 7, 2], dtype=np.int64),
        "small": np.array([1, 2, 3, 4], dtype=np.uint8),
        "flag": [True, False, True, True],
        "island": ["Biscoe", "Dream", "Biscoe", "Torgersen"],
        "sex": ["male", None, "female", "male"],
        "grade": pd.Categorical(["b", "a", "b", "c"]),
        "level": pd.Categorical([2, 1, 2, 3]),
        "maybe": pd.array([1, None, 3, 4], dtype="Int64"),
        "opt_flag": pd.array([True, None, False, True], dtype="boolean"),
    })


def _by_name(specs: tuple[FieldSpec, ...]) -> dict[str, FieldSpec]:
    return {s.name: s for s in specs}


def test_types_nullability_and_categories_come_from_the_sample(frame: pd.DataFrame) -> None:
    specs = infer_fields(frame)
    assert [s.name for s in specs] == list(frame.columns)
    got = _by_name(specs)
    assert got["length"] == FieldSpec("length", "float", dtype="float64")
    assert got["length_gaps"] == FieldSpec("length_gaps", "float", nullable=True,
                                           dtype="float64")
    assert got["count"] == FieldSpec("count", "integer", dtype="int64")
    assert got["small"] == FieldSpec("small", "integer", dtype="uint8")
    assert got["flag"] == FieldSpec("flag", "boolean", dtype="bool")
    assert got["island"] == FieldSpec("island", "string", dtype="str",
                                      categories=("Biscoe", "Dream", "Torgersen"))
    assert got["sex"] == FieldSpec("sex", "string", nullable=True, dtype="str",
                                   categories=("female", "male"))
    assert got["grade"] == FieldSpec("grade", "string", categories=("a", "b", "c"),
                                     dtype="category")
    assert got["level"] == FieldSpec("level", "integer", categories=(1, 2, 3),
                                     dtype="category")
    assert got["maybe"] == FieldSpec("maybe", "integer", nullable=True, dtype="Int64")
    assert got["opt_flag"] == FieldSpec("opt_flag", "boolean", nullable=True,
                                        dtype="boolean")


def test_object_columns_record_how_their_nulls_were_spelt() -> None:
    """The model saw None or NaN for a missing string: it may answer differently for each
    (an imputer for NaN passes None through), so the worker rebuilds the one it saw."""
    frame = pd.DataFrame({"none": pd.Series(["a", None], dtype=object),
                          "nan": pd.Series(["a", np.nan], dtype=object),
                          "full": pd.Series(["a", "b"], dtype=object),
                          "half": np.array([1.0, 2.0], dtype=np.float16)})
    got = _by_name(infer_fields(frame))
    assert got["none"].dtype == "object"
    # NaN in an object column is the default for strings; a dtype no contract names
    # (float16) is the type's default (float64).
    assert got["nan"].dtype is None and got["full"].dtype is None and got["half"].dtype is None


def test_integer_categories_are_python_ints(frame: pd.DataFrame) -> None:
    level = _by_name(infer_fields(frame))["level"]
    assert all(type(c) is int for c in level.categories or ())


def test_ranges_are_inferred_only_when_asked(frame: pd.DataFrame) -> None:
    plain = _by_name(infer_fields(frame))
    assert all(s.min is None and s.max is None for s in plain.values())
    ranged = _by_name(infer_fields(frame, ranges=True))
    assert (ranged["length"].min, ranged["length"].max) == (1.5, 4.0)
    assert (ranged["length_gaps"].min, ranged["length_gaps"].max) == (1.5, 4.0)
    assert (ranged["count"].min, ranged["count"].max) == (1, 7)
    assert type(ranged["count"].min) is int
    assert (ranged["island"].min, ranged["flag"].max) == (None, None)


def test_categories_stop_above_the_cap() -> None:
    at_cap = pd.DataFrame({"code": [f"c{i:03d}" for i in range(MAX_INFERRED_CATEGORIES)]})
    above = pd.DataFrame({"code": [f"c{i:03d}" for i in range(MAX_INFERRED_CATEGORIES + 1)]})
    assert len(infer_fields(at_cap)[0].categories or ()) == MAX_INFERRED_CATEGORIES
    assert infer_fields(above)[0] == FieldSpec("code", "string", dtype="str")
    assert infer_fields(at_cap, max_categories=10)[0].categories is None


def test_a_column_of_only_missing_strings_has_no_categories() -> None:
    spec = infer_fields(pd.DataFrame({"note": pd.Series([None, None], dtype=object)}))[0]
    assert spec == FieldSpec("note", "string", nullable=True, dtype="object")


def test_mixed_type_column_is_refused_naming_it() -> None:
    frame = pd.DataFrame({"ok": [1.0, 2.0, 3.0], "mixed": ["a", 1, None]})
    with pytest.raises(ContractError, match="column 'mixed' mixes strings with other values") \
            as info:
        infer_fields(frame)
    assert info.value.code == "INVALID_CONTRACT"


def test_unsupported_dtype_is_refused_naming_it() -> None:
    frame = pd.DataFrame({"when": pd.to_datetime(["2024-01-01", "2024-02-01"])})
    with pytest.raises(ContractError, match="column 'when' has dtype datetime64"):
        infer_fields(frame)


def test_float_categorical_is_refused_naming_it() -> None:
    frame = pd.DataFrame({"ratio": pd.Categorical([0.5, 1.5, 0.5])})
    with pytest.raises(ContractError, match="column 'ratio' is categorical with float64"):
        infer_fields(frame)


def test_non_string_column_names_are_refused() -> None:
    with pytest.raises(ContractError, match="column names must be strings"):
        infer_fields(pd.DataFrame({0: [1.0, 2.0]}))


@pytest.mark.parametrize(("dtype", "datatype"), [
    (np.float64, "FP64"), (np.float32, "FP32"), (np.float16, "FP16"), (np.int64, "INT64"),
    (np.int32, "INT32"), (np.uint8, "UINT8"), (np.bool_, "BOOL"),
])
def test_infer_tensor_maps_dtypes_and_frees_the_batch_axis(dtype: type,
                                                           datatype: str) -> None:
    spec = infer_tensor(np.zeros((5, 3, 2), dtype=dtype))
    assert spec == TensorSpec("input-0", datatype, (-1, 3, 2))


def test_infer_tensor_of_a_vector_and_a_custom_name() -> None:
    assert infer_tensor(np.arange(4), name="ids") == TensorSpec("ids", "INT64", (-1,))


@pytest.mark.parametrize("array", [np.array(["a", "b"]), np.array([1 + 2j]),
                                   np.array([None, 1], dtype=object)])
def test_infer_tensor_refuses_dtypes_without_a_protocol_datatype(array: np.ndarray) -> None:
    with pytest.raises(ContractError, match=f"array dtype {array.dtype} has no Open Inference"):
        infer_tensor(array)
