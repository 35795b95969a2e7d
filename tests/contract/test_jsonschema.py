"""Exporting a contract as JSON Schema (draft 2020-12).

The ``jsonschema`` library is not a Baton dependency and is not installed, so these tests
check the structure of the exported schema directly.
"""

from __future__ import annotations

from collections.abc import Callable

from baton.contract.jsonschema import contract_to_json_schema
from baton.contract.spec import Contract, FieldSpec, TensorSpec

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def test_records_input_schema(make_contract: Callable[..., Contract]) -> None:
    schema = contract_to_json_schema(make_contract())
    assert schema == {
        "$schema": DRAFT,
        "type": "object",
        "properties": {
            "amount": {"type": "number", "minimum": 0.0, "maximum": 1000.0},
            "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
            "member": {"type": "boolean"},
            "country": {"type": "string", "enum": ["DE", "FR", "US"]},
            "score": {"type": ["number", "null"]},
        },
        "required": ["amount", "member", "country"],
        "additionalProperties": False,
    }


def test_unknown_fields_policy_decides_additional_properties(
        make_contract: Callable[..., Contract]) -> None:
    lenient = make_contract(unknown_fields="ignore")
    assert contract_to_json_schema(lenient)["additionalProperties"] is True
    # What a model returns is always exact, whatever the inputs allow.
    assert contract_to_json_schema(lenient, "outputs")["additionalProperties"] is False


def test_records_output_schema(make_contract: Callable[..., Contract]) -> None:
    schema = contract_to_json_schema(make_contract(), "outputs")
    assert schema["properties"] == {
        "prediction": {"type": "string", "enum": ["no", "yes"]},
        "proba": {"type": "number", "minimum": 0.0, "maximum": 1.0},
    }
    assert schema["required"] == ["prediction", "proba"]


def test_nullable_categories_allow_null_in_the_enum() -> None:
    contract = Contract("records",
                        (FieldSpec("sex", "string", nullable=True, categories=("f", "m"),
                                   description="as recorded"),),
                        (FieldSpec("y", "integer", categories=(0, 1)),))
    schema = contract_to_json_schema(contract)
    assert schema["properties"]["sex"] == {"type": ["string", "null"], "enum": ["f", "m", None],
                                           "description": "as recorded"}
    assert schema["required"] == []
    assert contract_to_json_schema(contract, "outputs")["properties"]["y"] == {
        "type": "integer", "enum": [0, 1]}


def test_tensor_schema_describes_one_v2_tensor_per_input() -> None:
    contract = Contract("tensors",
                        (TensorSpec("pixels", "UINT8", (-1, 28, 28)),
                         TensorSpec("mask", "BOOL", (-1,)),
                         TensorSpec("weights", "FP32", (-1, 3))),
                        (TensorSpec("label", "BYTES", (-1,)),))
    schema = contract_to_json_schema(contract)
    assert schema["$schema"] == DRAFT
    assert schema["type"] == "array"
    assert (schema["minItems"], schema["maxItems"]) == (3, 3)
    pixels, mask, weights = schema["prefixItems"]
    assert pixels["required"] == ["name", "shape", "datatype", "data"]
    assert pixels["properties"]["name"] == {"const": "pixels"}
    assert pixels["properties"]["datatype"] == {"const": "UINT8"}
    shape = pixels["properties"]["shape"]
    assert (shape["minItems"], shape["maxItems"]) == (3, 3)
    assert "[-1, 28, 28]" in shape["description"]

    def item_type(tensor: dict) -> str:
        return tensor["properties"]["data"]["items"]["anyOf"][0]["type"]

    assert [item_type(t) for t in (pixels, mask, weights)] == ["integer", "boolean", "number"]
    label = contract_to_json_schema(contract, "outputs")["prefixItems"][0]
    assert item_type(label) == "string"
