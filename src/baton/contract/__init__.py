"""Contracts: what a model ingests and produces, inferred, declared, exported and enforced."""

from baton.contract.spec import Contract, FieldSpec, TensorSpec

__all__ = ["Contract", "FieldSpec", "TensorSpec"]
