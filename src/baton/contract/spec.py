"""What a model ingests and produces: tabular fields or Open Inference Protocol tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from baton.errors import ContractError

FIELD_TYPES = ("float", "integer", "boolean", "string")

#: Open Inference Protocol datatypes and the numpy dtype each maps to.
TENSOR_DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}

ContractKind = Literal["records", "tensors"]

_INTS = tuple(f"{p}int{b}" for p in ("", "u") for b in (8, 16, 32, 64))
#: The pandas dtypes a field's column can be built with in the model's DataFrame, by type:
#: what the training sample had (``baton.package`` records it). The first of each cannot
#: hold nulls; a nullable field needs one that can.
FRAME_DTYPES: dict[str, tuple[str, ...]] = {
    "float": ("float64", "float32", "Float64", "Float32"),
    "integer": (*_INTS, *(d.capitalize().replace("Uint", "UInt") for d in _INTS),
                "float64", "category"),
    "boolean": ("bool", "boolean", "object"),
    "string": ("object", "str", "string", "category"),
}
_NO_NULLS = frozenset({*_INTS, "bool"})


@dataclass(frozen=True)
class FieldSpec:
    """One named column of a tabular record."""

    name: str
    type: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[Any, ...] | None = None
    description: str = ""
    #: The pandas dtype of the model's column (``None``: the default for the type, see
    #: docs/contract.md#what-the-model-receives).
    dtype: str | None = None

    def __post_init__(self) -> None:
        where = f"field {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ContractError("every field needs a non-empty string 'name'")
        if self.type not in FIELD_TYPES:
            raise ContractError(f"{where}: type must be one of {', '.join(FIELD_TYPES)}, "
                                f"got {self.type!r}")
        if (self.min is not None or self.max is not None) and self.type not in ("float", "integer"):
            raise ContractError(f"{where}: min/max apply to float and integer fields only")
        for bound in (self.min, self.max):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)
                                      or math.isnan(bound)):
                raise ContractError(f"{where}: min/max must be numbers, got {bound!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ContractError(f"{where}: min ({self.min}) is greater than max ({self.max})")
        if self.categories is not None:
            if self.type not in ("string", "integer"):
                raise ContractError(f"{where}: categories apply to string and integer fields only")
            if len(self.categories) == 0:
                raise ContractError(f"{where}: categories must not be empty")
            # The decoder turns categories into a Literal: a wrong-typed category would let
            # values of the wrong type through (or fail only when a server starts).
            want = str if self.type == "string" else int
            wrong = [c for c in self.categories if isinstance(c, bool) or not isinstance(c, want)]
            if wrong:
                raise ContractError(f"{where}: categories of this {self.type} field must all "
                                    f"be {self.type}s, got {wrong[0]!r}")
        if self.dtype is not None:
            self._check_dtype(where)

    def _check_dtype(self, where: str) -> None:
        allowed = FRAME_DTYPES[self.type]
        if self.dtype not in allowed:
            raise ContractError(f"{where}: dtype of a {self.type} field must be one of "
                                f"{', '.join(allowed)}, got {self.dtype!r}")
        if self.dtype == "category" and self.categories is None:
            raise ContractError(f"{where}: dtype 'category' needs the field's categories")
        if self.nullable and self.dtype in _NO_NULLS:
            raise ContractError(f"{where}: dtype {self.dtype!r} cannot hold nulls and the "
                                "field is nullable (use a nullable dtype such as 'Int64', "
                                "'boolean' or 'float64')")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.nullable:
            out["nullable"] = True
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.description:
            out["description"] = self.description
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor, as in the Open Inference Protocol; -1 in a shape means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str = ""

    def __post_init__(self) -> None:
        where = f"tensor {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ContractError("every tensor needs a non-empty string 'name'")
        if self.datatype not in TENSOR_DATATYPES:
            raise ContractError(f"{where}: datatype must be one of "
                                f"{', '.join(TENSOR_DATATYPES)}, got {self.datatype!r}")
        if not self.shape or not all(isinstance(d, int) and (d == -1 or d > 0) for d in self.shape):
            raise ContractError(f"{where}: shape must be a non-empty list of positive sizes or -1, "
                                f"got {list(self.shape)!r}")

    @property
    def dtype(self) -> str:
        return TENSOR_DATATYPES[self.datatype]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype,
                               "shape": list(self.shape)}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Contract:
    """Inputs and outputs of a model. ``kind`` is ``records`` (fields) or ``tensors``."""

    kind: ContractKind
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    unknown_fields: Literal["reject", "ignore"] = "reject"
    _index: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("records", "tensors"):
            raise ContractError(f"contract kind must be 'records' or 'tensors', got {self.kind!r}")
        if self.unknown_fields not in ("reject", "ignore"):
            raise ContractError("contract unknown_fields must be 'reject' or 'ignore', "
                                f"got {self.unknown_fields!r}")
        expected = FieldSpec if self.kind == "records" else TensorSpec
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not specs:
                raise ContractError(f"contract {side} must not be empty")
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise ContractError(f"contract {side} repeat names: {', '.join(dupes)}")
            if not all(isinstance(s, expected) for s in specs):
                raise ContractError(f"contract {side} must all be {expected.__name__}")

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def with_unknown_fields(self, policy: Literal["reject", "ignore"]) -> Contract:
        return Contract(self.kind, self.inputs, self.outputs, policy)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "unknown_fields": self.unknown_fields,
                "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Contract:
        if not isinstance(data, dict):
            raise ContractError("contract must be a table")
        kind = data.get("kind", "records")
        if kind not in ("records", "tensors"):  # before the tables are read as one or other
            raise ContractError(f"contract kind must be 'records' or 'tensors', got {kind!r}")
        known = {"kind", "unknown_fields", "inputs", "outputs"}
        extra = sorted(set(data) - known)
        if extra:
            raise ContractError(f"contract has unknown keys: {', '.join(extra)}")
        make = _field_from_dict if kind == "records" else _tensor_from_dict
        sides = {}
        for side in ("inputs", "outputs"):
            items = data.get(side)
            if not isinstance(items, list):
                raise ContractError(f"contract {side} must be a list of tables")
            sides[side] = tuple(make(item, side, i) for i, item in enumerate(items))
        return cls(kind, sides["inputs"], sides["outputs"], data.get("unknown_fields", "reject"))


def _check_keys(item: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ContractError(f"{where} must be a table")
    extra = sorted(set(item) - allowed)
    if extra:
        raise ContractError(f"{where} has unknown keys: {', '.join(extra)}")
    return item


def _field_from_dict(item: Any, side: str, i: int) -> FieldSpec:
    where = f"contract {side}[{i}]"
    allowed = {"name", "type", "nullable", "min", "max", "categories", "description", "dtype"}
    d = _check_keys(item, allowed, where)
    if "type" not in d or "name" not in d:
        raise ContractError(f"{where} needs 'name' and 'type'")
    cats = d.get("categories")
    if cats is not None and not isinstance(cats, list):
        raise ContractError(f"{where}: categories must be a list, got {cats!r}")
    nullable = d.get("nullable", False)
    if not isinstance(nullable, bool):
        raise ContractError(f"{where}: nullable must be true or false, got {nullable!r}")
    return FieldSpec(name=d["name"], type=d["type"], nullable=nullable,
                     min=d.get("min"), max=d.get("max"),
                     categories=tuple(cats) if cats is not None else None,
                     description=d.get("description", ""), dtype=d.get("dtype"))


def _tensor_from_dict(item: Any, side: str, i: int) -> TensorSpec:
    where = f"contract {side}[{i}]"
    d = _check_keys(item, {"name", "datatype", "shape", "description"}, where)
    if "datatype" not in d or "name" not in d or "shape" not in d:
        raise ContractError(f"{where} needs 'name', 'datatype' and 'shape'")
    if not isinstance(d["shape"], list):
        raise ContractError(f"{where}: shape must be a list")
    return TensorSpec(name=d["name"], datatype=d["datatype"], shape=tuple(d["shape"]),
                      description=d.get("description", ""))
