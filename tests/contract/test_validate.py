"""Enforcing a contract: decoding input records and checking a model's outputs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from baton.batch import Batch
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.contract.validate import RecordsDecoder, check_outputs, decode_field_column
from baton.errors import ContractViolation, RequestError

MakeRecord = Callable[..., dict[str, Any]]


def _body(records: Any) -> bytes:
    return json.dumps(records).encode()


def test_valid_records_become_typed_columns(make_contract: Callable[..., Contract],
                                            make_record: MakeRecord) -> None:
    records = [make_record(),
               make_record(amount=7, age=None, member=False, country="US", score=None),
               make_record(amount=0.0, country="FR")]
    del records[2]["age"]  # a nullable field may be left out
    batch = RecordsDecoder(make_contract()).decode(_body(records))
    assert batch.rows == 3
    cols = batch.columns
    assert list(cols) == ["amount", "age", "member", "country", "score"]
    assert cols["amount"].dtype == np.float64
    assert cols["amount"].tolist() == [120.5, 7.0, 0.0]
    # A nullable integer travels as floats so that a null can be NaN.
    assert cols["age"].dtype == np.float64
    assert cols["age"][0] == 41 and math.isnan(cols["age"][1]) and math.isnan(cols["age"][2])
    assert cols["member"].dtype == np.bool_
    assert cols["member"].tolist() == [True, False, True]
    assert cols["country"] == ["DE", "US", "FR"]
    assert cols["score"][0] == 0.25 and math.isnan(cols["score"][1])
    assert batch.to_records()[0]["country"] == "DE"


def test_non_nullable_integers_stay_integers() -> None:
    contract = Contract("records", (FieldSpec("n", "integer"),), (FieldSpec("y", "float"),))
    col = RecordsDecoder(contract).decode(b'[{"n": 3}, {"n": -9007199254740993}]').columns["n"]
    assert col.dtype == np.int64
    assert col.tolist() == [3, -9007199254740993]


# Each case: the change to record 2 of 3, the field named, what the contract expects, what came.
BAD_VALUES = [
    pytest.param({"amount": "12.5"}, "amount", "float in [0.0, 1000.0], not null", "12.5",
                 id="numeric-string"),
    pytest.param({"amount": True}, "amount", "float in [0.0, 1000.0], not null", True,
                 id="bool-for-float"),
    pytest.param({"amount": 1000.5}, "amount", "float in [0.0, 1000.0], not null", 1000.5,
                 id="above-max"),
    pytest.param({"age": -1}, "age", "integer in [0, 150], or null", -1, id="below-min"),
    pytest.param({"age": 40.5}, "age", "integer in [0, 150], or null", 40.5,
                 id="float-for-integer"),
    pytest.param({"member": 1}, "member", "boolean, not null", 1, id="int-for-bool"),
    pytest.param({"country": "IT"}, "country", "string one of 'DE', 'FR', 'US', not null", "IT",
                 id="category-not-allowed"),
    pytest.param({"country": None}, "country", "string one of 'DE', 'FR', 'US', not null", None,
                 id="null-not-nullable"),
    pytest.param({"amount": None}, "amount", "float in [0.0, 1000.0], not null", None,
                 id="null-float"),
]


@pytest.mark.parametrize(("change", "field", "expected", "got"), BAD_VALUES)
def test_bad_value_names_record_field_expected_and_got(
        make_contract: Callable[..., Contract], make_record: MakeRecord,
        change: dict[str, Any], field: str, expected: str, got: Any) -> None:
    records = [make_record(), make_record(), make_record(**change)]
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(_body(records))
    err = info.value
    assert err.code == "CONTRACT_VIOLATION"
    assert err.http_status == 422
    assert err.details["direction"] == "input"
    [v] = err.violations
    assert (v["record"], v["field"], v["expected"], v["got"]) == (2, field, expected, got)
    assert f"record 2, field {field!r}" in err.message
    assert expected in err.message


def test_missing_field_is_named(make_contract: Callable[..., Contract],
                                make_record: MakeRecord) -> None:
    incomplete = make_record()
    del incomplete["member"]
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(_body([make_record(), incomplete]))
    [v] = info.value.violations
    assert (v["record"], v["field"], v["expected"]) == (1, "member", "boolean, not null")
    assert v["message"] == "missing field 'member'"
    assert "record 1, field 'member'" in info.value.message


def test_unknown_field_is_rejected_by_default(make_contract: Callable[..., Contract],
                                              make_record: MakeRecord) -> None:
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(_body([make_record(colour="red")]))
    [v] = info.value.violations
    assert (v["record"], v["field"], v["got"]) == (0, "colour", "red")
    assert "contract rejects unknown fields" in v["expected"]
    assert "field 'colour'" in info.value.message


def test_unknown_field_is_dropped_when_the_contract_ignores_them(
        make_contract: Callable[..., Contract], make_record: MakeRecord) -> None:
    decoder = RecordsDecoder(make_contract(unknown_fields="ignore"))
    batch = decoder.decode(_body([make_record(colour="red")]))
    assert "colour" not in batch.columns
    assert batch.columns["country"] == ["DE"]


@pytest.mark.parametrize(("raw", "field"), [("1e999", "amount"), ("-1e999", "score"),
                                            ("99999999999999999999999", "age")])
def test_numbers_beyond_range_are_violations_that_show_what_was_sent(
        make_contract: Callable[..., Contract], raw: str, field: str) -> None:
    values = {"amount": "1.0", "age": "3", "score": "0.5", field: raw}
    body = ('[{{"amount": {amount}, "age": {age}, "member": true, "country": "FR", '
            '"score": {score}}}]').format(**values).encode()
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(body)
    [v] = info.value.violations
    assert (v["record"], v["field"]) == (0, field)
    assert str(v["got"]) == raw
    assert raw in info.value.message


@pytest.mark.parametrize("body", [b'[{"amount": 1.0,', b"", b"   ", b"[{'amount': 1}]",
                                  b'[{"amount": NaN}]'])
def test_malformed_json_is_a_request_error(make_contract: Callable[..., Contract],
                                           body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        RecordsDecoder(make_contract()).decode(body)
    assert info.value.code == "INVALID_JSON"
    assert info.value.http_status == 400
    assert "not valid JSON" in info.value.message


@pytest.mark.parametrize("body", [b'{"amount": 1.0}', b"null", b'"records"'])
def test_body_that_is_not_a_list_is_refused(make_contract: Callable[..., Contract],
                                            body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        RecordsDecoder(make_contract()).decode(body)
    assert info.value.code == "BAD_SHAPE"
    assert "JSON list of records" in info.value.message


def test_empty_list_is_refused(make_contract: Callable[..., Contract]) -> None:
    with pytest.raises(RequestError) as info:
        RecordsDecoder(make_contract()).decode(b"[]")
    assert info.value.code == "EMPTY_REQUEST"


def test_a_record_that_is_not_an_object_is_named(make_contract: Callable[..., Contract],
                                                 make_record: MakeRecord) -> None:
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(_body([make_record(), 42]))
    [v] = info.value.violations
    assert (v["record"], v["field"], v["got"]) == (1, None, 42)
    assert "JSON object" in v["expected"]


# -- Columns (a records contract fed through the Open Inference Protocol) -----------------

def test_a_column_decodes_to_the_same_arrays_as_records() -> None:
    spec = FieldSpec("age", "integer", nullable=True, min=0)
    col = decode_field_column(spec, b"[3, null, 7]", 3)
    assert col.dtype == np.float64
    assert col[0] == 3 and math.isnan(col[1]) and col[2] == 7


@pytest.mark.parametrize(("raw", "index", "got"), [(b"[1.0, 1e999]", 1, "1e999"),
                                                   (b'[1.0, 2.0, "3"]', 2, "3"),
                                                   (b"[-5.0]", 0, -5.0)])
def test_a_bad_column_value_names_its_row(raw: bytes, index: int, got: Any) -> None:
    spec = FieldSpec("amount", "float", min=0.0)
    with pytest.raises(ContractViolation) as info:
        decode_field_column(spec, raw, raw.count(b",") + 1)
    [v] = info.value.violations
    assert (v["record"], v["field"], v["got"]) == (index, "amount", got)
    assert f"record {index}, field 'amount'" in info.value.message


def test_a_column_of_another_length_is_refused() -> None:
    with pytest.raises(ContractViolation, match="input 'x' has 2 values, other inputs have 3"):
        decode_field_column(FieldSpec("x", "float"), b"[1.0, 2.0]", 3)


# -- Outputs -------------------------------------------------------------------------------

def _outputs(**changes: Any) -> Batch:
    columns: dict[str, Any] = {"prediction": ["yes", "no", "yes"],
                               "proba": np.array([0.9, 0.2, 0.7])}
    columns.update(changes)
    return Batch({k: v for k, v in columns.items() if v is not None}, 3)


def test_conforming_outputs_pass(make_contract: Callable[..., Contract]) -> None:
    check_outputs(make_contract(), _outputs(), 3)
    check_outputs(make_contract(), _outputs(prediction=np.array(["yes", "no", "no"])), 3)


@pytest.mark.parametrize(("batch", "record", "field", "message"), [
    pytest.param(_outputs(proba=None), None, "proba", "model output lacks proba",
                 id="missing-column"),
    pytest.param(_outputs(proba=np.array([0.9, 0.2])), None, "proba",
                 "output row count differs from input", id="row-count"),
    pytest.param(_outputs(proba=np.array([0.9, 1.2, 0.7])), 1, "proba", "above max 1.0",
                 id="above-max"),
    pytest.param(_outputs(proba=np.array([0.9, 0.2, -0.1])), 2, "proba", "below min 0.0",
                 id="below-min"),
    pytest.param(_outputs(proba=np.array([0.9, np.nan, 0.7])), 1, "proba",
                 "null (NaN) not allowed", id="nan-not-nullable"),
    pytest.param(_outputs(proba=np.array([0.9, np.inf, 0.7])), 1, "proba", "infinite value",
                 id="infinity"),
    pytest.param(_outputs(proba=np.array([True, False, True])), 0, "proba",
                 "expected float values", id="bool-for-float"),
    pytest.param(_outputs(prediction=["yes", "maybe", "no"]), 1, "prediction",
                 "Invalid enum value 'maybe'", id="category-not-allowed"),
    pytest.param(_outputs(prediction=["yes", None, "no"]), 1, "prediction", "got `null`",
                 id="null-category"),
])
def test_bad_outputs_are_output_violations(make_contract: Callable[..., Contract], batch: Batch,
                                           record: int | None, field: str,
                                           message: str) -> None:
    with pytest.raises(ContractViolation) as info:
        check_outputs(make_contract(), batch, 3)
    err = info.value
    assert err.code == "OUTPUT_CONTRACT_VIOLATION"
    assert err.http_status == 500
    assert err.details["direction"] == "output"
    v = err.violations[0]
    assert (v["record"], v["field"]) == (record, field)
    assert message in v["message"]
    assert f"field {field!r}" in err.message


def test_nullable_output_accepts_nan_and_integer_categories_are_checked() -> None:
    contract = Contract("records", (FieldSpec("x", "float"),),
                        (FieldSpec("label", "integer", categories=(0, 1)),
                         FieldSpec("margin", "float", nullable=True)))
    check_outputs(contract, Batch({"label": np.array([0, 1]),
                                   "margin": np.array([np.nan, 0.5])}, 2), 2)
    with pytest.raises(ContractViolation) as info:
        check_outputs(contract, Batch({"label": np.array([0, 2]),
                                       "margin": np.array([0.1, 0.5])}, 2), 2)
    v = info.value.violations[0]
    assert (v["record"], v["field"], v["got"]) == (1, "label", 2)
    assert v["message"] == "not an allowed category"


def test_every_problem_is_listed(make_contract: Callable[..., Contract]) -> None:
    batch = Batch({"prediction": ["yes", "maybe", "no"]}, 3)
    contract = Contract("records", make_contract().inputs,
                        (*make_contract().outputs, FieldSpec("extra", "float")))
    with pytest.raises(ContractViolation) as info:
        check_outputs(contract, batch, 3)
    fields = [v["field"] for v in info.value.violations]
    assert fields == ["proba, extra", "prediction"]


TENSORS = Contract("tensors", (TensorSpec("x", "FP32", (-1, 4)),),
                   (TensorSpec("scores", "FP64", (-1, 3)),))


def test_conforming_tensor_output_passes() -> None:
    check_outputs(TENSORS, Batch({"scores": np.zeros((2, 3))}, 2), 2)
    check_outputs(TENSORS, Batch({"scores": np.zeros((2, 3), dtype=np.float32)}, 2), 2)


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((2, 4)), "tensor 'scores' has shape [2, 4], expected [-1, 3]"),
    (np.zeros((2,)), "tensor 'scores' has shape [2], expected [-1, 3]"),
    (np.zeros((2, 3, 1)), "tensor 'scores' has shape [2, 3, 1], expected [-1, 3]"),
    (np.array([["a", "b", "c"]] * 2), "tensor 'scores' has dtype <U1, expected FP64"),
    (np.array([[0.1, np.nan, 0.3]] * 2), "tensor 'scores' holds NaN or infinity"),
])
def test_bad_tensor_output_is_a_violation(array: np.ndarray, message: str) -> None:
    with pytest.raises(ContractViolation) as info:
        check_outputs(TENSORS, Batch({"scores": array}, 2), 2)
    assert info.value.code == "OUTPUT_CONTRACT_VIOLATION"
    v = info.value.violations[0]
    assert v["field"] == "scores"
    assert v["message"] == message


@pytest.mark.parametrize(("change", "shown"), [
    ({"amount": None}, "got null"), ({"amount": True}, "got true"),
    ({"country": None}, "got null")])
def test_violations_speak_json_not_python(make_contract: Callable[..., Contract],
                                          make_record: MakeRecord, change: dict[str, Any],
                                          shown: str) -> None:
    with pytest.raises(ContractViolation) as info:
        RecordsDecoder(make_contract()).decode(_body([make_record(**change)]))
    assert info.value.message.endswith(shown)
    assert "None" not in info.value.message and "True" not in info.value.message


def test_a_huge_value_is_cut_in_the_violation_and_says_so(
        make_contract: Callable[..., Contract], make_record: MakeRecord) -> None:
    huge = "x" * 7_000_000
    for record in (make_record(country=huge), {**make_record(), huge: 1}):
        with pytest.raises(ContractViolation) as info:
            RecordsDecoder(make_contract()).decode(_body([record]))
        body = json.dumps(info.value.to_dict())
        assert len(body) < 5_000, len(body)
        assert "7,000,000 characters, cut to 200" in body
    with pytest.raises(ContractViolation) as info:
        decode_field_column(FieldSpec("c", "string", categories=("a",)),
                            _body(["a", huge]), 2)
    [v] = info.value.violations
    assert v["record"] == 1 and v["got"].endswith("(7,000,000 characters, cut to 200)")
    assert len(info.value.message) < 1_000
