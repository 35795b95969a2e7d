"""One schema for the prediction log, wherever it is kept.

Creates the tables, or converts those of earlier releases with their data:

- the registry's migration 0003 (``BATON_PREDICTION_LOG_STORE=registry``): its tables
  stay; ``prediction_batches`` gains ``keys`` and ``keyed`` (its keys are all indexed
  already);
- the local SQLite file's own schema (``prediction_batches`` with its columns as BLOBs,
  ``prediction_key_index``, ``labels``; older files: ``prediction_keys (id, rid, idx)``):
  every batch, indexed key and label is copied into the tables below.

Revision ID: p0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0001"
down_revision = None
branch_labels = None
depends_on = None

JSON_TEXT = sa.Text().with_variant(sa.JSON(), "postgresql")
UNKEYED = sa.text("NOT keyed")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "prediction_batches" not in tables:
        _create_batches()
        _create_keys()
        _create_labels()
    elif "prediction_labels" in tables:  # the registry's 0003 tables
        _add_key_columns()
    else:  # the local file's ad-hoc schema
        columns = {c["name"] for c in inspector.get_columns("prediction_batches")}
        _convert_local(tables, columns)


def _create_batches() -> None:
    op.create_table(
        "prediction_batches",
        sa.Column("rid", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False, index=True),
        sa.Column("rows", sa.Integer, nullable=False),
        # json (not jsonb) on PostgreSQL: stored as written, cheap to insert, still
        # queryable (inputs->'bill_length_mm'->>0); TEXT on SQLite.
        sa.Column("inputs", JSON_TEXT, nullable=False),
        sa.Column("outputs", JSON_TEXT, nullable=False),
        sa.Column("keys", JSON_TEXT, nullable=True),
        sa.Column("keyed", sa.Boolean(create_constraint=False), nullable=False,
                  server_default=sa.true()),
    )
    _unkeyed_index()


def _unkeyed_index() -> None:
    op.create_index("prediction_batches_unkeyed", "prediction_batches", ["time"],
                    sqlite_where=UNKEYED, postgresql_where=UNKEYED)


def _create_keys() -> None:
    op.create_table(
        "prediction_keys",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("rid", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("time", sa.Float, nullable=False, index=True),
    )


def _create_labels() -> None:
    op.create_table(
        "prediction_labels",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("rid", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False, index=True),
    )
    op.create_index("prediction_labels_model_time", "prediction_labels",
                    ["model", "version", "time"])


def _add_key_columns() -> None:
    op.add_column("prediction_batches", sa.Column("keys", JSON_TEXT, nullable=True))
    op.add_column("prediction_batches", sa.Column(
        "keyed", sa.Boolean(create_constraint=False), nullable=False,
        server_default=sa.true()))
    _unkeyed_index()


def _convert_local(tables: set[str], columns: set[str]) -> None:
    """SQLite only (the local file was never anywhere else)."""
    for index in ("prediction_batches_time", "prediction_batches_unkeyed",
                  "labels_model_time"):
        op.execute(f"DROP INDEX IF EXISTS {index}")
    op.execute("ALTER TABLE prediction_batches RENAME TO prediction_batches_old")
    if "prediction_keys" in tables:  # a file from before keys were per model
        op.execute("ALTER TABLE prediction_keys RENAME TO prediction_keys_old")
    _create_batches()
    _create_keys()
    _create_labels()
    keys = "CAST(keys AS TEXT)" if "keys" in columns else "NULL"
    keyed = "keyed" if "keyed" in columns else "1"
    op.execute("INSERT INTO prediction_batches (rid, model, version, time, rows, inputs, "
               "outputs, keys, keyed) SELECT rid, model, version, time, rows, "
               f"CAST(inputs AS TEXT), CAST(outputs AS TEXT), {keys}, {keyed} "
               "FROM prediction_batches_old ORDER BY time, rowid")
    if "prediction_key_index" in tables:
        op.execute("INSERT OR REPLACE INTO prediction_keys (model, key, rid, idx, time) "
                   "SELECT k.model, k.id, k.rid, k.idx, b.time FROM prediction_key_index k "
                   "JOIN prediction_batches b ON b.rid = k.rid")
        op.execute("DROP TABLE prediction_key_index")
    if "prediction_keys" in tables:
        op.execute("INSERT OR REPLACE INTO prediction_keys (model, key, rid, idx, time) "
                   "SELECT b.model, k.id, k.rid, k.idx, b.time FROM prediction_keys_old k "
                   "JOIN prediction_batches b ON b.rid = k.rid")
        op.execute("DROP TABLE prediction_keys_old")
    if "labels" in tables:
        op.execute("INSERT INTO prediction_labels (id, model, version, rid, idx, label, "
                   "time) SELECT id, model, version, rid, idx, label, time FROM labels")
        op.execute("DROP TABLE labels")
    op.execute("DROP TABLE prediction_batches_old")


def downgrade() -> None:
    for table in ("prediction_labels", "prediction_keys", "prediction_batches"):
        op.drop_table(table)
