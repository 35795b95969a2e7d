"""Monitoring fixtures: a fresh PostgreSQL database, migrated as the registry's, for the
prediction log's ``registry`` store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.registry.conftest import PG_URL, pg_admin


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this module (dropped afterwards); the
    prediction log migrates it when it opens, as an engine does."""
    name = f"baton_predlog_{secrets.token_hex(6)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(db=name)
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
