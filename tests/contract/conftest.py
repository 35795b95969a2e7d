"""Factories for the contracts the contract tests decode and check against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from baton.contract.spec import Contract, FieldSpec


def _scoring_contract(unknown_fields: str = "reject") -> Contract:
    inputs = (
        FieldSpec("amount", "float", min=0.0, max=1000.0),
        FieldSpec("age", "integer", nullable=True, min=0, max=150),
        FieldSpec("member", "boolean"),
        FieldSpec("country", "string", categories=("DE", "FR", "US")),
        FieldSpec("score", "float", nullable=True),
    )
    outputs = (
        FieldSpec("prediction", "string", categories=("no", "yes")),
        FieldSpec("proba", "float", min=0.0, max=1.0),
    )
    return Contract("records", inputs, outputs, unknown_fields)  # type: ignore[arg-type]


@pytest.fixture
def make_contract() -> Callable[..., Contract]:
    """A records contract with one field of each kind; ``unknown_fields`` may be changed."""
    return _scoring_contract


@pytest.fixture
def make_record() -> Callable[..., dict[str, Any]]:
    """A record that satisfies the scoring contract, with some values replaced."""

    def make(**changes: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"amount": 120.5, "age": 41, "member": True,
                                  "country": "DE", "score": 0.25}
        record.update(changes)
        return record

    return make
