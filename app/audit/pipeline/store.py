"""The one idempotent write of login events into ``login_attempts``, shared by writer and fallback.

Every method writes a batch atomically (all rows or none) and stores an event already present
zero times more, so redelivery after a crash is harmless. The key is ``(event_id, created_at)``
(the table is partitioned on ``created_at``; both are fixed when the event is minted):

- ``unnest``: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT (event_id, created_at) DO NOTHING``;
- ``copy``: one binary ``COPY`` straight into the table, the common case having no duplicates;
  if the batch holds an event already stored, the COPY fails as a whole on the key and the batch
  is written again with ``unnest``;
- ``staging``: COPY into a temporary table, then the same ``INSERT ... ON CONFLICT``.

In the same transaction each adds the rows it really inserted to the hourly rollups
(``login_attempts_hourly``): the ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` feeds the rollup
upsert in one statement, and a COPY that succeeded inserted every row of the batch. A redelivered
event is therefore never counted twice, and rollups and rows cannot disagree.

bench/bench_audit_ingest.py compares them; the writer uses ``copy``, the cheapest for Postgres
(see docs/audit.md).

All run on the asyncpg connection underneath a SQLAlchemy engine: the app's pool is reused, and
arrays and COPY go through asyncpg without SQLAlchemy's per-statement overhead.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline.events import LoginEvent, packed_ip

InsertMethod = Literal["unnest", "copy", "staging"]
INSERT_METHODS: tuple[InsertMethod, ...] = ("unnest", "copy", "staging")
# The table's only unique index is its key; a partition's copy of it has the partition's name.
EVENT_KEY = "pk_login_attempts"

COLUMNS = (
    "event_id",
    "created_at",
    "phone_number",
    "user_id",
    "success",
    "auth_method",
    "reason",
    "ip_address",
    "user_agent",
    "request_id",
    "channel",
    "session_id",
    "service_name",
)
# Counts added to the rollups, keys sorted: concurrent writers then lock the hot rows (this
# hour's) in one order and never deadlock.
_ADD_TO_ROLLUPS = """
INSERT INTO login_attempts_hourly (hour, success, reason, channel, attempts)
SELECT {select}
ORDER BY 1, 2, 3, 4
ON CONFLICT (hour, success, reason, channel) DO UPDATE SET attempts = login_attempts_hourly.attempts + excluded.attempts
"""
ADD_COUNTS = _ADD_TO_ROLLUPS.format(
    select="* FROM unnest($1::timestamptz[], $2::bool[], $3::text[], $4::text[], $5::int8[])"
)


def _insert_counted(source: str) -> str:
    """Insert the rows of ``source`` once each, and count the really inserted ones into the rollups."""
    counted = _ADD_TO_ROLLUPS.format(
        select="date_trunc('hour', created_at, 'UTC'), success, reason, channel, count(*) "
        "FROM inserted GROUP BY 1, 2, 3, 4"
    )
    return f"""
WITH inserted AS (
    INSERT INTO login_attempts
        (event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,
         channel, session_id, service_name)
    {source}
    ON CONFLICT (event_id, created_at) DO NOTHING
    RETURNING created_at, success, reason, channel
), counted AS ({counted})
SELECT count(*) FROM inserted
"""  # noqa: S608 (constants only)


INSERT_UNNEST = _insert_counted(
    """SELECT * FROM unnest(
        $1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::bool[],
        $6::text[], $7::text[], $8::inet[], $9::text[], $10::text[],
        $11::text[], $12::text[], $13::text[])"""
)
_STAGING = "audit_login_attempts_staging"
CREATE_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS audit_login_attempts_staging (
    event_id uuid, created_at timestamptz, phone_number text, user_id int8, success bool,
    auth_method text, reason text, ip_address inet, user_agent text, request_id text,
    channel text, session_id text, service_name text
) ON COMMIT DELETE ROWS
"""
INSERT_FROM_STAGING = _insert_counted(
    """SELECT event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address,
              user_agent, request_id, channel, session_id, service_name
       FROM audit_login_attempts_staging"""
)

# Errors that are the rows' fault: retrying the same rows can never succeed.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    UnicodeError,
)


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, DATA_ERRORS)


def _records(events: Sequence[LoginEvent]) -> list[tuple[Any, ...]]:
    return [
        (
            e.event_id,
            e.created_at,
            e.phone_number,
            e.user_id,
            e.success,
            e.auth_method,
            e.reason,
            packed_ip(e.ip_address) if e.ip_address is not None else None,
            e.user_agent,
            e.request_id,
            e.channel,
            e.session_id,
            e.service_name,
        )
        for e in events
    ]


async def insert_events(conn: Any, events: Sequence[LoginEvent], method: InsertMethod = "copy") -> int:
    """Insert ``events`` on an asyncpg connection atomically; return how many rows were new."""
    if not events:
        return 0
    if method == "copy":
        return await _copy_or_insert(conn, events)
    if method == "staging":
        return await _staging_insert(conn, events)
    return await _unnest_insert(conn, events)


async def _unnest_insert(conn: Any, events: Sequence[LoginEvent]) -> int:
    columns = list(zip(*_records(events), strict=True))
    inserted: int = await conn.fetchval(INSERT_UNNEST, *columns)
    return inserted


def is_event_key(constraint: str | None) -> bool:
    """The key of login_attempts or of one of its partitions (``<partition>_pkey``)."""
    return constraint == EVENT_KEY or (
        constraint is not None and constraint.startswith("login_attempts_") and constraint.endswith("_pkey")
    )


async def _copy_or_insert(conn: Any, events: Sequence[LoginEvent]) -> int:
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("login_attempts", records=_records(events), columns=COLUMNS)
            await add_to_rollups(conn, events)  # the COPY went through: every row of the batch is new
    except asyncpg.UniqueViolationError as exc:
        if not is_event_key(exc.constraint_name):
            raise
        # Some event is stored already (redelivery); the transaction wrote nothing, so insert the
        # new ones (one statement, rollups included: atomic on its own).
        return await _unnest_insert(conn, events)
    return len(events)


async def add_to_rollups(conn: Any, events: Sequence[LoginEvent]) -> None:
    """Add ``events``, all just inserted, to the hourly rollups (in the caller's transaction)."""
    await add_rows_to_rollups(conn, [(e.created_at, e.success, e.reason, e.channel) for e in events])


RollupRow = tuple[datetime.datetime, bool, str, str]  # created_at, success, reason, channel


async def add_rows_to_rollups(conn: Any, rows: Sequence[RollupRow]) -> None:
    """Add rows just inserted, as (created_at, success, reason, channel), to the hourly rollups."""
    if not rows:
        return
    counts = Counter(
        (int(created_at.timestamp()) // 3600, success, reason, channel) for created_at, success, reason, channel in rows
    )
    keys = sorted(counts)
    hours, successes, reasons, channels = zip(*keys, strict=True)
    await conn.execute(
        ADD_COUNTS,
        [datetime.datetime.fromtimestamp(hour * 3600, datetime.UTC) for hour in hours],
        list(successes),
        list(reasons),
        list(channels),
        [counts[key] for key in keys],
    )


async def _staging_insert(conn: Any, events: Sequence[LoginEvent]) -> int:
    async with conn.transaction():
        await conn.execute(CREATE_STAGING)
        await conn.copy_records_to_table(_STAGING, records=_records(events), columns=COLUMNS)
        inserted: int = await conn.fetchval(INSERT_FROM_STAGING)
    return inserted


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under a pooled SQLAlchemy connection.

    A connection that failed for any reason but bad rows is invalidated, so the pool never hands
    out a socket to a Postgres that has gone away (the writer's engine may lack pre-ping).
    """
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        try:
            yield raw.driver_connection
        except BaseException as exc:
            if not is_data_error(exc):
                await asyncio.shield(connection.invalidate())
            raise


async def store_events(engine: AsyncEngine, events: Sequence[LoginEvent], method: InsertMethod = "copy") -> int:
    async with driver_connection(engine) as conn:
        return await insert_events(conn, events, method)
