"""Isolated environments built with uv."""

from baton.env.builder import EnvBuilder, Environment, lock_key

__all__ = ["EnvBuilder", "Environment", "lock_key"]
