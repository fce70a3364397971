"""login_attempts.channel, session_id and service_name: USSD sign-ins in the same audit trail

Every attempt says which channel it came through: ``http`` (the login endpoint) or ``ussd`` (the
gateway's endpoints, app/ussd). A USSD attempt also keeps the gateway's session id and the name of
the service credential that made the call. Existing rows are login-endpoint attempts, so they get
``http``: a constant server default, which Postgres (11+) records in the catalogue without
rewriting the table, so the migration is quick at any size. The two new text columns are NULL for
every existing row, also without a rewrite.

Revision ID: 0007_channel
Revises: 0006_legacy
Create Date: 2026-12-14 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_channel"
down_revision: str | None = "0006_legacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("login_attempts", sa.Column("channel", sa.String(length=8), server_default="http", nullable=False))
    op.add_column("login_attempts", sa.Column("session_id", sa.String(length=64), nullable=True))
    op.add_column("login_attempts", sa.Column("service_name", sa.String(length=64), nullable=True))
    op.create_check_constraint(op.f("ck_login_attempts_channel"), "login_attempts", "channel IN ('http', 'ussd')")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_login_attempts_channel"), "login_attempts", type_="check")
    op.drop_column("login_attempts", "service_name")
    op.drop_column("login_attempts", "session_id")
    op.drop_column("login_attempts", "channel")
