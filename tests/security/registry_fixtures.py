"""A registry of its own per test (its own database on each back end, its own signing key),
for tests that tamper with the database: drop triggers, edit rows, remove entries.

The shared registry fixtures (tests/registry/conftest.py) give one database per module;
tampering with it would break every later test of the module.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from baton.cli.main import main
from baton.registry.audit import checkpoint_path
from baton.registry.blobs import BlobStore
from baton.registry.db import Database
from baton.registry.service import Registry
from baton.trust import generate_signing_key
from tests.registry.conftest import BACKENDS, PG_URL, StubCheck, pg_admin


@dataclass
class OwnRegistry:
    registry: Registry
    url: str
    key_file: Path
    backend: str

    def sql(self, statement: str, **params: Any) -> None:
        """Run one statement as a database editor would (no registry, no key)."""
        with self.registry.db.engine.begin() as conn:
            conn.execute(text(statement), params)

    def drop_append_only_triggers(self) -> None:
        if self.backend == "postgresql":
            self.sql("DROP TRIGGER audit_events_no_change ON audit_events")
        else:
            self.sql("DROP TRIGGER audit_events_no_update")
            self.sql("DROP TRIGGER audit_events_no_delete")

    def verify_locally(self) -> Result:
        """``baton audit verify`` as the operator on the registry host runs it."""
        return CliRunner().invoke(main, ["audit", "verify", "--db", self.url, "--key-file",
                                         str(self.key_file)])


@pytest.fixture(params=BACKENDS)
def own_registry(request: pytest.FixtureRequest, tmp_path: Path,
                 ) -> Iterator[Callable[..., OwnRegistry]]:
    """Factory: a fresh, migrated registry database with a key made in tmp_path."""
    made: list[tuple[Database, str | None]] = []

    def make(approvals: int = 1) -> OwnRegistry:
        pg_name = None
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / secrets.token_hex(4)}.db"
        else:
            pg_name = f"baton_test_{secrets.token_hex(6)}"
            with pg_admin() as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            url = PG_URL.format(db=pg_name)
        db = Database(url)
        made.append((db, pg_name))
        db.migrate()
        key_file = tmp_path / secrets.token_hex(4) / "signing.key"
        reg = Registry(db, BlobStore(tmp_path / "blobs"), generate_signing_key(key_file),
                       approvals_required=approvals, check_runner=StubCheck(),
                       head_file=checkpoint_path(key_file))
        return OwnRegistry(reg, url, key_file, request.param)

    yield make
    for db, pg_name in made:
        db.dispose()
        if pg_name is not None:
            with pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
