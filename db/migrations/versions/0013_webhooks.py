"""webhooks: endpoints that receive account events, one delivery row per event and endpoint

``webhook_endpoints`` holds the URLs registered with ``ladys-essence webhooks add``, the event types
each wants, and each one's signing secret, encrypted (it signs, so it cannot be hashed).
``webhook_deliveries`` is one event to one endpoint: pending, delivered, or dead (dead-lettered
after WEBHOOKS_MAX_ATTEMPTS). ``account_events.fanned_out_at`` marks the events whose deliveries
exist; the events already there when this runs are marked too (no endpoint existed to want them).

Revision ID: 0013_webhooks
Revises: 0012_recovery
Create Date: 2026-12-05 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013_webhooks"
down_revision: str | None = "0012_recovery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("account_events", sa.Column("fanned_out_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE account_events SET fanned_out_at = created_at")
    op.create_index(
        "ix_account_events_unfanned",
        "account_events",
        ["created_at", "id"],
        postgresql_where=sa.text("fanned_out_at IS NULL"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1, increment=1), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.String(length=48)), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1, increment=1), nullable=False),
        sa.Column("endpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=12), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name=op.f("ck_webhook_deliveries_status")),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "uq_webhook_deliveries_endpoint_event", "webhook_deliveries", ["endpoint_id", "event_id"], unique=True
    )
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["endpoint_id", "user_id", "seq"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_finished_at",
        "webhook_deliveries",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    # The endpoints, their secrets and the delivery history go with the feature (`db downgrade` says so first).
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_account_events_unfanned", table_name="account_events")
    op.drop_column("account_events", "fanned_out_at")
