"""Declaring a contract: every invalid declaration is refused with a message naming it."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import tomli_w

from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.errors import ContractError

OUT = (FieldSpec("y", "float"),)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"type": "double"}, r"field 'x': type must be one of float, integer, boolean, string, "
                         r"got 'double'"),
    ({"type": "float", "min": 5, "max": 1}, r"field 'x': min \(5\) is greater than max \(1\)"),
    ({"type": "string", "min": 0}, r"field 'x': min/max apply to float and integer fields only"),
    ({"type": "float", "min": float("nan")}, r"field 'x': min/max must be numbers, got nan"),
    ({"type": "integer", "max": True}, r"field 'x': min/max must be numbers, got True"),
    ({"type": "float", "max": "10"}, r"field 'x': min/max must be numbers, got '10'"),
    ({"type": "float", "categories": (1.0, 2.0)},
     r"field 'x': categories apply to string and integer fields only"),
    ({"type": "string", "categories": ()}, r"field 'x': categories must not be empty"),
    ({"type": "string", "categories": ("a", 1)},
     r"field 'x': categories of this string field must all be strings, got 1"),
    ({"type": "integer", "categories": (1, "2")},
     r"field 'x': categories of this integer field must all be integers, got '2'"),
    ({"type": "integer", "categories": (True, False)},
     r"field 'x': categories of this integer field must all be integers, got True"),
    ({"type": "float", "dtype": "int64"},
     r"field 'x': dtype of a float field must be one of float64, float32, Float64, Float32, "
     r"got 'int64'"),
    ({"type": "string", "dtype": "category"},
     r"field 'x': dtype 'category' needs the field's categories"),
    ({"type": "integer", "nullable": True, "dtype": "int64"},
     r"field 'x': dtype 'int64' cannot hold nulls and the field is nullable"),
])
def test_invalid_field_is_refused_naming_it(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message) as info:
        FieldSpec("x", **kwargs)
    assert info.value.code == "INVALID_CONTRACT"


def test_field_needs_a_name() -> None:
    with pytest.raises(ContractError, match="non-empty string 'name'"):
        FieldSpec("", "float")


def test_equal_min_and_max_is_allowed() -> None:
    spec = FieldSpec("x", "integer", min=3, max=3)
    assert (spec.min, spec.max) == (3, 3)


@pytest.mark.parametrize(("datatype", "shape", "message"), [
    ("FLOAT", (-1,), r"tensor 't': datatype must be one of BOOL, .*, got 'FLOAT'"),
    ("FP32", (), r"tensor 't': shape must be a non-empty list .*, got \[\]"),
    ("FP32", (-1, 0), r"tensor 't': shape must be .*, got \[-1, 0\]"),
    ("FP32", (-2, 3), r"tensor 't': shape must be .*, got \[-2, 3\]"),
])
def test_invalid_tensor_is_refused_naming_it(datatype: str, shape: tuple[int, ...],
                                             message: str) -> None:
    with pytest.raises(ContractError, match=message):
        TensorSpec("t", datatype, shape)


def test_tensor_dtype_follows_the_open_inference_protocol() -> None:
    assert TensorSpec("t", "FP32", (-1, 4)).dtype == "float32"
    assert TensorSpec("t", "BYTES", (-1,)).dtype == "object"


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Contract("records", (), OUT), "contract inputs must not be empty"),
    (lambda: Contract("records", (FieldSpec("a", "float"),), ()),
     "contract outputs must not be empty"),
    (lambda: Contract("records", (FieldSpec("a", "float"), FieldSpec("b", "float"),
                                  FieldSpec("a", "integer")), OUT),
     "contract inputs repeat names: a"),
    (lambda: Contract("records", (FieldSpec("a", "float"),),
                      (FieldSpec("y", "float"), FieldSpec("y", "string"))),
     "contract outputs repeat names: y"),
    (lambda: Contract("grid", (FieldSpec("a", "float"),), OUT),  # type: ignore[arg-type]
     "contract kind must be 'records' or 'tensors', got 'grid'"),
    (lambda: Contract("records", (FieldSpec("a", "float"),), OUT, "allow"),  # type: ignore[arg-type]
     "unknown_fields must be 'reject' or 'ignore', got 'allow'"),
    (lambda: Contract("records", (TensorSpec("a", "FP32", (-1,)),), OUT),
     "contract inputs must all be FieldSpec"),
    (lambda: Contract("tensors", (TensorSpec("a", "FP32", (-1,)),), OUT),
     "contract outputs must all be TensorSpec"),
])
def test_invalid_contract_is_refused(build: Any, message: str) -> None:
    with pytest.raises(ContractError, match=message) as info:
        build()
    assert info.value.code == "INVALID_CONTRACT"


def _records_dict() -> dict[str, Any]:
    return {
        "kind": "records",
        "unknown_fields": "ignore",
        "inputs": [
            {"name": "amount", "type": "float", "min": 0.0, "max": 1000.0,
             "description": "order total in EUR"},
            {"name": "age", "type": "integer", "nullable": True, "min": 0, "max": 150,
             "dtype": "Int64"},
            {"name": "country", "type": "string", "categories": ["DE", "FR"],
             "dtype": "category"},
            {"name": "tier", "type": "integer", "categories": [1, 2, 3]},
            {"name": "member", "type": "boolean"},
        ],
        "outputs": [{"name": "score", "type": "float", "min": 0.0, "max": 1.0}],
    }


def test_records_contract_round_trips_through_dict_and_toml() -> None:
    data = _records_dict()
    contract = Contract.from_dict(data)
    assert contract.to_dict() == data
    again = Contract.from_dict(tomllib.loads(tomli_w.dumps(contract.to_dict())))
    assert again == contract
    assert contract.input_names == ["amount", "age", "country", "tier", "member"]
    assert contract.inputs[2].categories == ("DE", "FR")
    assert contract.inputs[0].description == "order total in EUR"
    assert [s.dtype for s in contract.inputs] == [None, "Int64", "category", None, None]


def test_tensors_contract_round_trips_through_dict() -> None:
    data = {"kind": "tensors", "unknown_fields": "reject",
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
    contract = Contract.from_dict(data)
    assert contract.to_dict() == data
    assert contract.inputs[0].shape == (-1, 28, 28)


def test_from_dict_defaults_to_records_that_reject_unknown_fields() -> None:
    contract = Contract.from_dict({"inputs": [{"name": "a", "type": "float"}],
                                   "outputs": [{"name": "y", "type": "float"}]})
    assert (contract.kind, contract.unknown_fields) == ("records", "reject")
    assert contract.inputs[0].nullable is False


def test_with_unknown_fields_changes_only_the_policy() -> None:
    contract = Contract.from_dict(_records_dict())
    strict = contract.with_unknown_fields("reject")
    assert strict.unknown_fields == "reject"
    assert (strict.inputs, strict.outputs) == (contract.inputs, contract.outputs)


def _with(side: str, index: int, **changes: Any) -> dict[str, Any]:
    data = _records_dict()
    data[side][index] = {**data[side][index], **changes}
    return data


@pytest.mark.parametrize(("data", "message"), [
    ({**_records_dict(), "strict": True}, "contract has unknown keys: strict"),
    (_with("inputs", 0, minimum=0), r"contract inputs\[0\] has unknown keys: minimum"),
    (_with("outputs", 0, unit="EUR"), r"contract outputs\[0\] has unknown keys: unit"),
    ({**_records_dict(), "inputs": []}, "contract inputs must not be empty"),
    ({k: v for k, v in _records_dict().items() if k != "inputs"},
     "contract inputs must be a list of tables"),
    ({**_records_dict(), "inputs": ["amount"]}, r"contract inputs\[0\] must be a table"),
    ({**_records_dict(), "inputs": [{"name": "amount"}]},
     r"contract inputs\[0\] needs 'name' and 'type'"),
    (_with("inputs", 1, nullable="no"),
     r"contract inputs\[1\]: nullable must be true or false, got 'no'"),
    (_with("inputs", 2, categories="DEFR"),
     r"contract inputs\[2\]: categories must be a list, got 'DEFR'"),
    (_with("inputs", 0, type="decimal"), "field 'amount': type must be one of"),
    ({**_records_dict(), "kind": "tensor"}, "contract kind must be 'records' or 'tensors'"),
    ({"kind": "tensors", "inputs": [{"name": "x", "datatype": "FP32", "shape": 4}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]},
     r"contract inputs\[0\]: shape must be a list"),
    ({"kind": "tensors", "inputs": [{"name": "x", "datatype": "FP32"}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]},
     r"contract inputs\[0\] needs 'name', 'datatype' and 'shape'"),
])
def test_from_dict_refuses_invalid_tables_naming_the_entry(data: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ContractError, match=message):
        Contract.from_dict(data)
