"""login_attempts partitioned by month, and hourly rollups of its outcomes

The table is converted without rewriting it. Today's table is renamed ``login_attempts_before``
and attached, as it is, as the partition for everything before the switch (the first day of the
month after the newest row, or after now): a CHECK constraint covering that range is added NOT
VALID and validated first, so ATTACH PARTITION finds it proven and does not scan. Monthly
partitions for the next three months and a DEFAULT partition (an event far outside them, from a
skewed clock or a late legacy import, lands there) follow; the writer's maintenance and
``ladys-essence audit partitions ensure`` keep creating months ahead.

A unique key of a partitioned table must include the partition column: the primary key becomes
``(event_id, created_at)``, the writer's conflict target (``created_at`` is fixed when the event is
minted). ``id`` stays, drawn from the parent's identity sequence (continued from the old one), so
ids stay unique across partitions by construction; no index is kept on it alone.

Costs on a large table, all inside this one transaction while the table is locked (the audit
writer keeps events in Redis meanwhile): one index build, the unique (event_id, created_at) index
on the old rows (build it beforehand with CREATE UNIQUE INDEX CONCURRENTLY
login_attempts_before_event_id_created_at ON login_attempts (event_id, created_at), and this
migration skips it), and one read of every row to fill the rollups. The three (..., created_at, id)
indexes are reused as they are.

``login_attempts_hourly`` holds, per UTC hour, outcome and reason, how many attempts there were;
the writer adds to it in the transaction of every batch it inserts. A ``channel`` column joins
the key when the table gains one.

Revision ID: 0008_partitions
Revises: 0007_channel
Create Date: 2026-12-18 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_partitions"
down_revision: str | None = "0007_channel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "login_attempts_before"
DEFAULT = "login_attempts_default"
MONTHS_AHEAD = 3
# The indexes of the old table, kept on it as its partitions of the parent's indexes.
INDEXES = {
    "ix_login_attempts_created_at_id": "(created_at, id)",
    "ix_login_attempts_phone_created_at_id": "(phone_number, created_at, id)",
    "ix_login_attempts_ip_created_at_id": "(ip_address, created_at, id)",
}
COLUMNS = (
    "id, event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,"
    " source, legacy_ip, channel, session_id, service_name"
)


# The highest id given out so far, by the rows or by the identity sequence (0 if none).
LAST_ID = """
SELECT greatest(
    (SELECT coalesce(max(id), 0) FROM login_attempts),
    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM login_attempts_id_seq))
"""


def _continue_ids(last_id: int) -> None:
    """The new identity sequence of login_attempts carries on after ``last_id``."""
    if last_id > 0:
        op.execute(f"SELECT setval(pg_get_serial_sequence('login_attempts', 'id'), {int(last_id)})")


def _partition_name(year: int, month: int) -> str:
    return f"login_attempts_y{year:04d}m{month:02d}"


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("SET LOCAL TimeZone = 'UTC'")
    # The switch: the old table keeps everything before it, including the rest of this month.
    switch = bind.execute(sa.text("SELECT date_trunc('month', now(), 'UTC') + interval '1 month'")).scalar_one()
    last_id = bind.execute(sa.text(LAST_ID)).scalar_one()

    op.execute(f"ALTER TABLE login_attempts RENAME TO {BEFORE}")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RENAME TO {BEFORE}{index.removeprefix('ix_login_attempts')}")
    op.execute(f"ALTER TABLE {BEFORE} ALTER COLUMN id DROP IDENTITY")  # the parent's sequence takes over
    op.execute(f"ALTER TABLE {BEFORE} DROP CONSTRAINT pk_login_attempts")
    op.execute(f"ALTER TABLE {BEFORE} DROP CONSTRAINT uq_login_attempts_event_id")
    op.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {BEFORE}_event_id_created_at ON {BEFORE} (event_id, created_at)")
    op.execute(
        f"ALTER TABLE {BEFORE} ADD CONSTRAINT {BEFORE}_pkey PRIMARY KEY USING INDEX {BEFORE}_event_id_created_at"
    )
    # Rows dated after the switch (a skewed clock) are few: they move to their partition below.
    op.execute(f"CREATE TEMPORARY TABLE login_attempts_later (LIKE {BEFORE}) ON COMMIT DROP")
    later = f"DELETE FROM {BEFORE} WHERE created_at >= '{switch.isoformat()}' RETURNING *"  # noqa: S608
    op.execute(f"WITH later AS ({later}) INSERT INTO login_attempts_later SELECT * FROM later")  # noqa: S608
    op.execute(
        f"ALTER TABLE {BEFORE} ADD CONSTRAINT {BEFORE}_range CHECK (created_at < '{switch.isoformat()}') NOT VALID"
    )
    op.execute(f"ALTER TABLE {BEFORE} VALIDATE CONSTRAINT {BEFORE}_range")

    op.execute(
        """
        CREATE TABLE login_attempts (
            id bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL,
            event_id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            phone_number varchar(20) NOT NULL,
            user_id bigint,
            success boolean NOT NULL,
            auth_method varchar(10),
            reason varchar(32) NOT NULL,
            ip_address inet,
            user_agent varchar(255),
            request_id varchar(64),
            source varchar(8) NOT NULL DEFAULT 'api',
            legacy_ip text,
            channel varchar(8) NOT NULL DEFAULT 'http',
            session_id varchar(64),
            service_name varchar(64),
            CONSTRAINT ck_login_attempts_channel CHECK (channel IN ('http', 'ussd')),
            CONSTRAINT pk_login_attempts PRIMARY KEY (event_id, created_at)
        ) PARTITION BY RANGE (created_at)
        """
    )
    _continue_ids(last_id)
    for index, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON login_attempts {columns}")
    op.execute(
        f"ALTER TABLE login_attempts ATTACH PARTITION {BEFORE} FOR VALUES FROM (MINVALUE) TO ('{switch.isoformat()}')"
    )
    op.execute(f"ALTER TABLE {BEFORE} DROP CONSTRAINT {BEFORE}_range")  # the partition bound says it now
    start = switch
    for _ in range(MONTHS_AHEAD):
        end = bind.execute(
            sa.text("SELECT CAST(:start AS timestamptz) + interval '1 month'"), {"start": start}
        ).scalar_one()
        op.execute(
            f"CREATE TABLE {_partition_name(start.year, start.month)} PARTITION OF login_attempts "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        start = end
    op.execute(f"CREATE TABLE {DEFAULT} PARTITION OF login_attempts DEFAULT")
    op.execute(f"INSERT INTO login_attempts ({COLUMNS}) SELECT {COLUMNS} FROM login_attempts_later")  # noqa: S608

    op.create_table(
        "login_attempts_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "success", "reason", name=op.f("pk_login_attempts_hourly")),
    )
    op.execute(
        "INSERT INTO login_attempts_hourly (hour, success, reason, attempts) "
        "SELECT date_trunc('hour', created_at, 'UTC'), success, reason, count(*) "
        "FROM login_attempts GROUP BY 1, 2, 3"
    )


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_table("login_attempts_hourly")
    last_id = bind.execute(sa.text(LAST_ID)).scalar_one()
    op.execute(f"ALTER TABLE login_attempts DETACH PARTITION {BEFORE}")
    # Rows written since the switch go back into the one table.
    op.execute(f"INSERT INTO {BEFORE} ({COLUMNS}) SELECT {COLUMNS} FROM login_attempts")  # noqa: S608
    op.execute("DROP TABLE login_attempts")
    op.execute(f"ALTER TABLE {BEFORE} DROP CONSTRAINT {BEFORE}_pkey")
    op.execute(f"ALTER TABLE {BEFORE} RENAME TO login_attempts")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {BEFORE}{index.removeprefix('ix_login_attempts')} RENAME TO {index}")
    op.execute("ALTER TABLE login_attempts ADD CONSTRAINT pk_login_attempts PRIMARY KEY (id)")
    op.execute("ALTER TABLE login_attempts ADD CONSTRAINT uq_login_attempts_event_id UNIQUE (event_id)")
    op.execute("ALTER TABLE login_attempts ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
    _continue_ids(last_id)
