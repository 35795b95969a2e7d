"""Which stage an error belongs to: decode, contract, queue, model or output (or, for an
error of the engine itself, :data:`INTERNAL`)."""

from __future__ import annotations

from baton.errors import (
    BatonError,
    ContractViolation,
    ModelNotReady,
    PayloadTooLarge,
    RequestError,
)

#: The stage and code an error of the engine itself is counted under (the caller got a 500).
INTERNAL = ("internal", "INTERNAL_ERROR")


def error_stage(exc: BatonError) -> str:
    if isinstance(exc, ContractViolation):
        return "output" if exc.direction == "output" else "contract"
    if isinstance(exc, RequestError | PayloadTooLarge):
        return "decode"
    if isinstance(exc, ModelNotReady):
        return "queue"
    return "model"
