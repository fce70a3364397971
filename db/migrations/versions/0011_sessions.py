"""sessions: a session is a row of its own; refresh tokens belong to it

Before, a session was the family of ``refresh_tokens`` rows sharing a ``family_id``, and "live" had
three definitions (any unrevoked row; no revoked row; rotation looked at neither). Now ``sessions``
holds the session (account, channel, created, ``auth_time``, last use, when and why it ended) and a
refresh token is usable only while its session is live.

Every family becomes a session with the same id (the ``sid`` its access tokens carry), so nobody is
signed out: a family none of whose rows was revoked is a live session until its newest token
expires. A family with a revoked row was ended by an action (every ending revoked the whole
family); rows inserted after that are the survivors of a race with that action, so the session
ends when the action did.

Revision ID: 0011_sessions
Revises: 0010_rollup_channel
Create Date: 2026-12-05 04:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_sessions"
down_revision: str | None = "0010_rollup_channel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=8), server_default="http", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ip", postgresql.INET(), nullable=True),
        sa.Column("last_user_agent", sa.String(length=255), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.CheckConstraint("channel IN ('http', 'ussd')", name=op.f("ck_sessions_channel")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_user_live", "sessions", ["user_id"], postgresql_where=sa.text("ended_at IS NULL"))
    op.execute(
        """
        INSERT INTO sessions (id, user_id, channel, created_at, auth_time, expires_at, last_used_at,
                              last_user_agent, ended_at, end_reason)
        SELECT family_id,
               min(user_id),
               'http',
               min(created_at),
               NULL,
               max(expires_at),
               max(created_at),
               (array_agg(user_agent ORDER BY created_at DESC))[1],
               min(revoked_at),
               (array_agg(revoked_reason ORDER BY revoked_at) FILTER (WHERE revoked_at IS NOT NULL))[1]
        FROM refresh_tokens
        GROUP BY family_id
        """
    )
    op.drop_index("ix_refresh_tokens_user_active", table_name="refresh_tokens")
    op.drop_index(op.f("ix_refresh_tokens_family_id"), table_name="refresh_tokens")
    op.alter_column("refresh_tokens", "family_id", new_column_name="session_id")
    op.create_index(op.f("ix_refresh_tokens_session_id"), "refresh_tokens", ["session_id"])
    op.create_foreign_key(
        op.f("fk_refresh_tokens_session_id_sessions"),
        "refresh_tokens",
        "sessions",
        ["session_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_column("refresh_tokens", "user_id")
    op.drop_column("refresh_tokens", "revoked_at")
    op.drop_column("refresh_tokens", "revoked_reason")
    op.drop_column("refresh_tokens", "user_agent")


def downgrade() -> None:
    op.add_column("refresh_tokens", sa.Column("user_agent", sa.String(length=255), nullable=True))
    op.add_column("refresh_tokens", sa.Column("revoked_reason", sa.String(length=32), nullable=True))
    op.add_column("refresh_tokens", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("refresh_tokens", sa.Column("user_id", sa.BigInteger(), nullable=True))
    # Opaque refresh tokens mean nothing to the old code: the old code reads only JWTs, so those
    # rows' sessions simply end for it (their tokens are refused), which is the safe direction.
    op.execute(
        """
        UPDATE refresh_tokens AS t
        SET user_id = s.user_id,
            revoked_at = s.ended_at,
            revoked_reason = s.end_reason,
            user_agent = s.last_user_agent
        FROM sessions AS s
        WHERE s.id = t.session_id
        """
    )
    op.alter_column("refresh_tokens", "user_id", nullable=False)
    op.drop_constraint(op.f("fk_refresh_tokens_session_id_sessions"), "refresh_tokens", type_="foreignkey")
    op.drop_index(op.f("ix_refresh_tokens_session_id"), table_name="refresh_tokens")
    op.alter_column("refresh_tokens", "session_id", new_column_name="family_id")
    op.create_index(op.f("ix_refresh_tokens_family_id"), "refresh_tokens", ["family_id"])
    op.create_index(
        "ix_refresh_tokens_user_active",
        "refresh_tokens",
        ["user_id"],
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    op.create_foreign_key(
        op.f("fk_refresh_tokens_user_id_users"), "refresh_tokens", "users", ["user_id"], ["id"], ondelete="CASCADE"
    )
    op.drop_index("ix_sessions_user_live", table_name="sessions")
    op.drop_index("ix_sessions_user_id", table_name="sessions")
    op.drop_table("sessions")
