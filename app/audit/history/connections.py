"""Connections for reading the history: the asyncpg connection under a pooled SQLAlchemy one, set up
for audit reads, and the API's statement timeout.

The SQL runs on a plain asyncpg connection, as the audit writer's does; values always travel as
bind parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import AppError

# An API page or summary that runs longer than this is stopped (export and CLI have no limit).
API_STATEMENT_TIMEOUT_MS = 15_000


class AuditQueryTimeout(AppError):
    status_code = 503
    code = "audit_query_timeout"
    message = "This query took too long. Narrow the time range or filter by phone number or IP address."


class AuditReadConflict(AppError):
    """A read that lost a lock conflict with a change of the tables themselves (a migration, retention)."""

    status_code = 503
    code = "audit_busy"
    message = "The login history is being reorganised. Try again in a few seconds."


@asynccontextmanager
async def pooled_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under one of the app's pooled SQLAlchemy connections."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        yield raw.driver_connection


@asynccontextmanager
async def read_transaction(
    engine: AsyncEngine, *, timeout_ms: int | None = None, snapshot: bool = False
) -> AsyncIterator[Any]:
    """An asyncpg connection from the app's pool, inside one transaction, set up for audit reads.

    ``snapshot``: REPEATABLE READ, so several statements (a summary) see the same rows.

    Plans are made for the actual values (``force_custom_plan``): asyncpg prepares every statement,
    and a generic plan cannot tell a phone with ten rows from one with ten thousand, nor a /16 of a
    mobile carrier from an empty one.
    """
    async with pooled_connection(engine) as conn, conn.transaction(isolation="repeatable_read" if snapshot else None):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        if timeout_ms is not None:
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        yield conn


@asynccontextmanager
async def api_read(engine: AsyncEngine, *, snapshot: bool = False) -> AsyncIterator[Any]:
    """An audit read for the API: its statements stop after API_STATEMENT_TIMEOUT_MS, and a
    statement stopped that way is the client's 503 ``audit_query_timeout``, never a 500. One chosen
    as a deadlock's victim (a migration locking the tables in the other order) is a 503 too."""
    try:
        async with read_transaction(engine, timeout_ms=API_STATEMENT_TIMEOUT_MS, snapshot=snapshot) as conn:
            yield conn
    except asyncpg.QueryCanceledError as exc:  # statement_timeout
        raise AuditQueryTimeout() from exc
    except (asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError) as exc:
        raise AuditReadConflict(headers={"Retry-After": "5"}) from exc
