"""Alembic environment of the prediction log's tables: run on the connection the store
hands over (see ``predlog/store.py``), with a version table of its own, so the tables can
share a database with the registry's schema."""

from __future__ import annotations

from alembic import context

from baton.monitor.predlog.tables import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
