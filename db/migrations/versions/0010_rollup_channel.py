"""login_attempts_hourly.channel, and an index of PIN-locked refusals: summaries without the rows

The rollups gain the channel (``http`` or ``ussd``) as part of their key, so a summary's totals by
channel, and a summary filtered on one channel, read a few rows per hour instead of the rows. The
partial index ``ix_login_attempts_pin_locked`` (time, with the number included) finds the
``pin_locked`` refusals of a range without reading the table, so a summary with ``top=0`` reads
no row of a whole hour.

Upgrade builds the index, then recounts the rollups from the rows (one GROUP BY over
``login_attempts``: seconds per million rows), with inserts into the audit table held off
meanwhile (a SHARE lock: the writer's batches wait in Redis; pages and exports go on, summaries
wait for the recount), so the rollups equal the rows when it commits. Downgrade sums the channels
back together.

Deploy: the writers of the code before and after this revision write different rollup keys, so
stop the old processes' writers before upgrading (the service's own start-up upgrade does it in
the right order for a single host; with several hosts, stop them all, upgrade, start the new
code). Entries wait in Redis meanwhile; nothing is lost.

Revision ID: 0010_rollup_channel
Revises: 0009_admin
Create Date: 2026-12-01 12:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_rollup_channel"
down_revision: str | None = "0009_admin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "pk_login_attempts_hourly"


def upgrade() -> None:
    op.execute("LOCK TABLE login_attempts IN SHARE MODE")
    op.create_index(
        op.f("ix_login_attempts_pin_locked"),
        "login_attempts",
        ["created_at"],
        postgresql_include=["phone_number"],
        postgresql_where=sa.text("reason = 'pin_locked'"),
    )
    # The rollups are locked only for the recount, after the index is built.
    op.execute("LOCK TABLE login_attempts_hourly IN ACCESS EXCLUSIVE MODE")
    op.drop_constraint(op.f(KEY), "login_attempts_hourly", type_="primary")
    op.add_column("login_attempts_hourly", sa.Column("channel", sa.String(length=8), nullable=True))
    op.execute("DELETE FROM login_attempts_hourly")
    op.execute(
        "INSERT INTO login_attempts_hourly (hour, success, reason, channel, attempts) "
        "SELECT date_trunc('hour', created_at, 'UTC'), success, reason, channel, count(*) "
        "FROM login_attempts GROUP BY 1, 2, 3, 4"
    )
    op.alter_column("login_attempts_hourly", "channel", nullable=False)
    op.create_check_constraint(
        op.f("ck_login_attempts_hourly_channel"), "login_attempts_hourly", "channel IN ('http', 'ussd')"
    )
    op.create_primary_key(op.f(KEY), "login_attempts_hourly", ["hour", "success", "reason", "channel"])


def downgrade() -> None:
    op.drop_index(op.f("ix_login_attempts_pin_locked"), table_name="login_attempts")
    op.execute("LOCK TABLE login_attempts_hourly IN ACCESS EXCLUSIVE MODE")
    op.execute(
        "CREATE TEMPORARY TABLE hourly_without_channel ON COMMIT DROP AS "
        "SELECT hour, success, reason, sum(attempts)::int8 AS attempts FROM login_attempts_hourly GROUP BY 1, 2, 3"
    )
    op.drop_constraint(op.f(KEY), "login_attempts_hourly", type_="primary")
    op.drop_constraint(op.f("ck_login_attempts_hourly_channel"), "login_attempts_hourly", type_="check")
    op.execute("DELETE FROM login_attempts_hourly")
    op.drop_column("login_attempts_hourly", "channel")
    op.execute(
        "INSERT INTO login_attempts_hourly (hour, success, reason, attempts) "
        "SELECT hour, success, reason, attempts FROM hourly_without_channel"
    )
    op.create_primary_key(op.f(KEY), "login_attempts_hourly", ["hour", "success", "reason"])
