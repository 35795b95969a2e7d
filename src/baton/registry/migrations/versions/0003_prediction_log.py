"""The prediction log's tables, formerly (BATON_PREDICTION_LOG_STORE=registry).

This revision used to create ``prediction_batches``, ``prediction_keys`` and
``prediction_labels`` here. They belong to the monitoring package now
(``baton.monitor.predlog.tables``), with migrations and a version table of their own
(``baton_predlog_version``): an engine whose prediction log uses this database creates
them, or converts, data included, those this revision made in earlier releases. So it
does nothing now, and a database that an engine's log used first still migrates.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
