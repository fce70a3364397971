"""account events: the transactional outbox of account changes, and each user's event counter

``users.event_seq`` is the number of the user's last event: the change's transaction bumps it
(``UPDATE ... RETURNING``), which takes the user's row lock, so two changes of one account get
consecutive numbers in commit order. ``account_events`` has no foreign key to ``users``: the event
of a deletion must outlive the row. ``created_at`` defaults to ``clock_timestamp()`` (the insert's
time, after the row lock was granted), not the transaction's start.

Revision ID: 0005_account_events
Revises: 0002
Create Date: 2026-12-10 09:14:03.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_account_events"
down_revision: str | None = "0004_platform"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("event_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "account_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=48), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_events")),
    )
    op.create_index("uq_account_events_user_seq", "account_events", ["user_id", "seq"], unique=True)
    op.create_index(
        "ix_account_events_unpublished",
        "account_events",
        ["created_at", "id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index(
        "ix_account_events_published_at",
        "account_events",
        ["published_at"],
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("account_events")
    op.drop_column("users", "event_seq")
