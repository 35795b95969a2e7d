"""The prediction log's tables (BATON_PREDICTION_LOG_STORE=registry).

For engines that keep their prediction log in the registry's database: one row per scored
batch with its inputs and outputs as JSON, the latest prediction of each stream key per
model, and the labels.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prediction_batches",
        sa.Column("rid", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False, index=True),
        sa.Column("rows", sa.Integer, nullable=False),
        # json (not jsonb) on PostgreSQL: stored as written, cheap to insert, still
        # queryable (inputs->'bill_length_mm'->>0); TEXT on SQLite.
        sa.Column("inputs", sa.Text().with_variant(sa.JSON(), "postgresql"), nullable=False),
        sa.Column("outputs", sa.Text().with_variant(sa.JSON(), "postgresql"), nullable=False),
    )
    op.create_table(
        "prediction_keys",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("rid", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("time", sa.Float, nullable=False, index=True),
    )
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


def downgrade() -> None:
    for table in ("prediction_labels", "prediction_keys", "prediction_batches"):
        op.drop_table(table)
