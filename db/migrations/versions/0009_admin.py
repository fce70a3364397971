"""admin: the record of support staff's actions, recovery codes, deleted accounts

``admin_actions`` is one row per action of the admin panel or the support CLI (who, what, to whom,
when, from where). ``users.recovery_hash`` / ``recovery_expires_at`` hold a one-time temporary
password (hashed only); ``users.deleted_at`` marks an account whose personal data was erased.

Revision ID: 0009_admin
Revises: 0008_partitions
Create Date: 2026-12-01 09:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009_admin"
down_revision: str | None = "0008_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("recovery_hash", sa.String(length=255), nullable=True))
    op.add_column("users", sa.Column("recovery_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1, increment=1), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target_user_id", sa.BigInteger(), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("client_ip", postgresql.INET(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_actions")),
    )
    op.create_index("ix_admin_actions_created_at_id", "admin_actions", ["created_at", "id"])
    op.create_index("ix_admin_actions_target_created_at_id", "admin_actions", ["target_user_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("admin_actions")
    op.drop_column("users", "deleted_at")
    op.drop_column("users", "recovery_expires_at")
    op.drop_column("users", "recovery_hash")
