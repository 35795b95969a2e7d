"""Identity: user names unique whatever their case; tokens an admin can govern.

- ``users``: a unique index on ``lower(name)`` (SQLite and PostgreSQL), so ``Alice`` and
  ``alice`` cannot both exist. Existing case-variant duplicates stop the migration with the
  names to resolve: the registry cannot choose which of two people keeps the name.
- ``tokens``: the engine scopes the token carries (JSON list; NULL for tokens made before
  this revision, which carry their user's role's scopes), whether it is a service token,
  who created it, when it was last used, and when and by whom it was revoked.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from baton.errors import Conflict

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    _refuse_case_duplicates()
    op.create_index("uq_users_name_lower", "users", [sa.text("lower(name)")], unique=True)
    op.add_column("tokens", sa.Column("scopes", sa.JSON, nullable=True))
    op.add_column("tokens", sa.Column("service", sa.Boolean, nullable=False,
                                      server_default=sa.false()))
    op.add_column("tokens", sa.Column("created_by", sa.String(100), nullable=True))
    op.add_column("tokens", sa.Column("last_used_at", TS, nullable=True))
    op.add_column("tokens", sa.Column("revoked_at", TS, nullable=True))
    op.add_column("tokens", sa.Column("revoked_by", sa.String(100), nullable=True))
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])


def _refuse_case_duplicates() -> None:
    rows = op.get_bind().execute(sa.text(
        "SELECT lower(name) AS folded, name FROM users WHERE lower(name) IN "
        "(SELECT lower(name) FROM users GROUP BY lower(name) HAVING count(*) > 1) "
        "ORDER BY folded, name")).all()
    if rows:
        groups: dict[str, list[str]] = {}
        for folded, name in rows:
            groups.setdefault(folded, []).append(name)
        listed = "; ".join(", ".join(names) for names in groups.values())
        raise Conflict(
            "registry migration 0004 needs user names unique regardless of case, but these "
            f"users differ only by case: {listed}. Rename or delete all but one of each "
            "group in the registry database (UPDATE users SET name = ... WHERE id = ...), "
            "then run the migration again.", code="USER_NAME_CASE_DUPLICATES",
            details={"users": list(groups.values())})


def downgrade() -> None:
    op.drop_index("ix_tokens_user_id", table_name="tokens")
    with op.batch_alter_table("tokens") as batch:
        for column in ("revoked_by", "revoked_at", "last_used_at", "created_by", "service",
                       "scopes"):
            batch.drop_column(column)
    op.drop_index("uq_users_name_lower", table_name="users")
