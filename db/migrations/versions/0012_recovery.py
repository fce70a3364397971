"""login_attempts.channel may be ``sms``: self-service recovery's text messages in the audit trail

Recovery codes themselves live in Redis (app/recovery/codes.py), not in a table: they last ten
minutes, expire by themselves, and each check must be atomic with the number's budgets. What stays
is the audit trail, where every code sent and every code checked is one row; a code sent by SMS is
channel ``sms``. Only the CHECK constraints change (the partitioned table and its hourly rollup),
which needs no rewrite.

Revision ID: 0012_recovery
Revises: 0011_sessions
Create Date: 2026-12-05 05:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_recovery"
down_revision: str | None = "0011_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("login_attempts", "login_attempts_hourly")


def _channels(allowed: str) -> None:
    for table in TABLES:
        op.drop_constraint(op.f(f"ck_{table}_channel"), table, type_="check")
        op.create_check_constraint(op.f(f"ck_{table}_channel"), table, f"channel IN ({allowed})")


def upgrade() -> None:
    _channels("'http', 'ussd', 'sms'")


def downgrade() -> None:
    # Rows of the sms channel would break the narrower constraint: they go with the feature.
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE channel = 'sms'")  # noqa: S608 - constant table names
    _channels("'http', 'ussd'")
