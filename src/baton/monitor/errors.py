"""Which stage an error belongs to: decode, contract, queue, model or output."""

from __future__ import annotations

from baton.errors import (
    BatonError,
    ContractViolation,
    ModelNotReady,
    PayloadTooLarge,
    RequestError,
)


def error_stage(exc: BatonError) -> str:
    if isinstance(exc, ContractViolation):
        return "output" if exc.direction == "output" else "contract"
    if isinstance(exc, RequestError | PayloadTooLarge):
        return "decode"
    if isinstance(exc, ModelNotReady):
        return "queue"
    return "model"
