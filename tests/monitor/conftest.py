"""Monitoring fixtures: a fresh PostgreSQL database, migrated as the registry's, for the
prediction log's ``registry`` store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.registry.conftest import new_pg_database


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this module (dropped afterwards); the
    prediction log migrates it when it opens, as an engine does."""
    with new_pg_database("baton_predlog") as url:
        yield url
