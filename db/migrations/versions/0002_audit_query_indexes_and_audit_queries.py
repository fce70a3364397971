"""audit query indexes and the audit_queries table

Every audit page is ordered by (created_at, id) newest first, so each index of login_attempts ends
in those columns: a filtered page is one backward index scan that stops after ``limit`` rows. The
single-column time index and the (phone, created_at) index of 0001 are replaced by their
(..., created_at, id) forms; an (ip_address, created_at, id) index serves the IP and CIDR filters.

On a large table the CREATE INDEX statements block writes to login_attempts while they run (15-70 s
per index at 10 million rows on 2 cores); the audit writer keeps events in Redis meanwhile. For a
much larger table, build the three indexes with CREATE INDEX CONCURRENTLY first (same names and
columns): this migration then skips them and only drops the two old ones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 10:02:11.480193
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # IF [NOT] EXISTS: on a big table an operator may build the new indexes CONCURRENTLY beforehand.
    op.drop_index("ix_login_attempts_phone_created_at", table_name="login_attempts", if_exists=True)
    op.drop_index("ix_login_attempts_created_at", table_name="login_attempts", if_exists=True)
    op.create_index(
        "ix_login_attempts_created_at_id", "login_attempts", ["created_at", "id"], unique=False, if_not_exists=True
    )
    op.create_index(
        "ix_login_attempts_phone_created_at_id",
        "login_attempts",
        ["phone_number", "created_at", "id"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_login_attempts_ip_created_at_id",
        "login_attempts",
        ["ip_address", "created_at", "id"],
        unique=False,
        if_not_exists=True,
    )
    op.create_table(
        "audit_queries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1, increment=1), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("filters", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("client_ip", postgresql.INET(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_audit_queries_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_queries")),
    )


def downgrade() -> None:
    op.drop_table("audit_queries")
    op.drop_index("ix_login_attempts_ip_created_at_id", table_name="login_attempts")
    op.drop_index("ix_login_attempts_phone_created_at_id", table_name="login_attempts")
    op.drop_index("ix_login_attempts_created_at_id", table_name="login_attempts")
    op.create_index(
        "ix_login_attempts_phone_created_at", "login_attempts", ["phone_number", "created_at"], unique=False
    )
    op.create_index("ix_login_attempts_created_at", "login_attempts", ["created_at"], unique=False)
