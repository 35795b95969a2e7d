"""Export a contract as JSON Schema (draft 2020-12), e.g. for OpenAPI or other tools."""

from __future__ import annotations

from typing import Any

from baton.contract.spec import Contract, FieldSpec, TensorSpec

_JSON_TYPES = {"float": "number", "integer": "integer", "boolean": "boolean", "string": "string"}
_TENSOR_ITEM = {"BOOL": "boolean", "BYTES": "string"}


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[spec.type]}
    if spec.categories is not None:
        schema["enum"] = list(spec.categories)
    if spec.min is not None:
        schema["minimum"] = spec.min
    if spec.max is not None:
        schema["maximum"] = spec.max
    if spec.nullable:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    if spec.description:
        schema["description"] = spec.description
    return schema


def record_schema(specs: tuple[FieldSpec, ...], *, reject_unknown: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {s.name: field_schema(s) for s in specs},
        "required": [s.name for s in specs if not s.nullable],
        "additionalProperties": not reject_unknown,
    }


def tensor_schema(spec: TensorSpec) -> dict[str, Any]:
    item = _TENSOR_ITEM.get(spec.datatype, "integer" if "INT" in spec.datatype else "number")
    return {
        "type": "object",
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": {"type": "array", "items": {"type": "integer"},
                      "minItems": len(spec.shape), "maxItems": len(spec.shape),
                      "description": f"declared shape {list(spec.shape)} (-1: any size)"},
            "data": {"type": "array", "items": {"anyOf": [{"type": item}, {"type": "array"}]}},
        },
        "required": ["name", "shape", "datatype", "data"],
    }


def contract_to_json_schema(contract: Contract, side: str = "inputs") -> dict[str, Any]:
    """JSON Schema for one side (``inputs`` or ``outputs``) of a contract.

    For records the schema describes one record; for tensors, one V2 tensor per input.
    """
    specs = getattr(contract, side)
    base = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    if contract.kind == "records":
        reject = contract.unknown_fields == "reject" or side == "outputs"
        return base | record_schema(specs, reject_unknown=reject)
    return base | {"type": "array", "prefixItems": [tensor_schema(s) for s in specs],
                   "minItems": len(specs), "maxItems": len(specs)}
