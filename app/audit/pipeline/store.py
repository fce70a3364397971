"""The one idempotent write of login events into ``login_attempts``, shared by writer and fallback.

Every method writes a batch atomically (all rows or none) and stores an event already present
zero times more, so redelivery after a crash is harmless:

- ``unnest``: one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT (event_id) DO NOTHING``;
- ``copy``: one binary ``COPY`` straight into the table, the common case having no duplicates;
  if the batch holds an event already stored, the COPY fails as a whole on the unique index and
  the batch is written again with ``unnest``;
- ``staging``: COPY into a temporary table, then the same ``INSERT ... ON CONFLICT``.

bench/bench_audit_ingest.py compares them; the writer uses ``copy``, the cheapest for Postgres
(see docs/audit.md).

All run on the asyncpg connection underneath a SQLAlchemy engine: the app's pool is reused, and
arrays and COPY go through asyncpg without SQLAlchemy's per-statement overhead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline.events import LoginEvent, packed_ip
from app.core.postgres import row_count

InsertMethod = Literal["unnest", "copy", "staging"]
INSERT_METHODS: tuple[InsertMethod, ...] = ("unnest", "copy", "staging")
EVENT_ID_UNIQUE = "uq_login_attempts_event_id"

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
INSERT_UNNEST = """
INSERT INTO login_attempts
    (event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,
     channel, session_id, service_name)
SELECT * FROM unnest(
    $1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::bool[],
    $6::text[], $7::text[], $8::inet[], $9::text[], $10::text[],
    $11::text[], $12::text[], $13::text[])
ON CONFLICT (event_id) DO NOTHING
"""
_STAGING = "audit_login_attempts_staging"
CREATE_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS audit_login_attempts_staging (
    event_id uuid, created_at timestamptz, phone_number text, user_id int8, success bool,
    auth_method text, reason text, ip_address inet, user_agent text, request_id text,
    channel text, session_id text, service_name text
) ON COMMIT DELETE ROWS
"""
INSERT_FROM_STAGING = """
INSERT INTO login_attempts
    (event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,
     channel, session_id, service_name)
SELECT event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,
       channel, session_id, service_name
FROM audit_login_attempts_staging
ON CONFLICT (event_id) DO NOTHING
"""

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
    status: str = await conn.execute(INSERT_UNNEST, *columns)
    return row_count(status)


async def _copy_or_insert(conn: Any, events: Sequence[LoginEvent]) -> int:
    try:
        await conn.copy_records_to_table("login_attempts", records=_records(events), columns=COLUMNS)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != EVENT_ID_UNIQUE:
            raise
        # Some event is stored already (redelivery); the COPY wrote nothing, so insert the new ones.
        return await _unnest_insert(conn, events)
    return len(events)


async def _staging_insert(conn: Any, events: Sequence[LoginEvent]) -> int:
    async with conn.transaction():
        await conn.execute(CREATE_STAGING)
        await conn.copy_records_to_table(_STAGING, records=_records(events), columns=COLUMNS)
        status: str = await conn.execute(INSERT_FROM_STAGING)
    return row_count(status)


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
