"""Connections for reading the history: the asyncpg connection under a pooled SQLAlchemy one, set up
for audit reads, and the API's statement timeout.

The SQL runs on a plain asyncpg connection, as the audit writer's does; values always travel as
bind parameters.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.audit.history.budget import AuditBudgetSpent, ReadBudget
from app.core.errors import AppError

# An API page or summary that runs longer than this is stopped (export and CLI have no limit).
API_STATEMENT_TIMEOUT_MS = 15_000
# Every connection of the security team's pool (AuditPool): a history read takes one core at most,
# never parallel workers beside it, leaving the host's others to sign-in (docs/benchmarks.md). JIT is
# off for the same reason: compiling costs these statements more than it saves them.
AUDIT_SESSION_SETTINGS = {"max_parallel_workers_per_gather": "0", "jit": "off"}


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


class AuditReadsBusy(AppError):
    """Every audit read connection of this process is taken and none came free in time."""

    status_code = 503
    code = "audit_reads_busy"
    message = "The login history is busy with other queries. Try again in a few seconds."


class AuditPool:
    """The security team's own connections: a small pool apart from the one sign-in uses.

    API reads take one of ``reads`` places (waiting up to ``wait_seconds``, then 503
    ``audit_reads_busy`` with Retry-After) and exports their own ``exports`` places (ExportSlots), so
    a flood of summaries or exports can slow the history down but never take a connection a sign-in
    needs. The pool has exactly one connection per place: nothing waits inside SQLAlchemy's pool.
    Each connection uses one core at most (AUDIT_SESSION_SETTINGS), and an account's reads are
    charged to its ``budget`` (budget.py): past it a read waits for room, up to 1.5 ``wait_seconds``,
    then gets 429 ``audit_budget_spent`` with Retry-After.
    """

    def __init__(
        self, url: str, *, reads: int, exports: int, wait_seconds: float, budget: ReadBudget | None = None
    ) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=max(1, reads) + max(1, exports),
            max_overflow=0,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"server_settings": AUDIT_SESSION_SETTINGS},
        )
        self._reads = asyncio.Semaphore(max(1, reads))
        self.wait_seconds = wait_seconds
        self.budget = budget or ReadBudget(0)

    @asynccontextmanager
    async def _place(self, account: int | None = None) -> AsyncIterator[None]:
        if wait := self.budget.wait(account):
            # Held, not refused at once: a script that ignores Retry-After gets one answer per
            # AUDIT_READ_WAIT_SECONDS per request, not a tight loop of refusals that costs the process
            # more than the reads did. Spread over half as long again: a flood's held reads would
            # otherwise all wake at one instant, a burst of work in the event loop sign-in shares.
            await asyncio.sleep(min(wait, self.wait_seconds) * random.uniform(1.0, 1.5))  # noqa: S311 (not a secret)
            self.budget.check(account)  # no room yet after all that: 429 with Retry-After
        try:
            await asyncio.wait_for(self._reads.acquire(), self.wait_seconds)
        except TimeoutError as exc:
            raise AuditReadsBusy(headers={"Retry-After": str(max(1, round(self.wait_seconds)))}) from exc
        try:
            self.budget.check(account)  # still past it, or its other reads went first: 429 with Retry-After
        except AuditBudgetSpent:
            self._reads.release()
            raise
        started = time.monotonic()
        try:
            yield
        finally:
            self._reads.release()
            self.budget.charge(account, time.monotonic() - started)

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False, account: int | None = None) -> AsyncIterator[Any]:
        """An API read (:func:`api_read`) on this pool, charged to ``account``'s budget. The request
        holds no other connection meanwhile: its staff guard read the signed-in user on the session
        checks' connections (``signed_in``), which it gave back at once."""
        async with self._place(account), api_read(self.engine, snapshot=snapshot) as conn:
            yield conn

    @asynccontextmanager
    async def record(self) -> AsyncIterator[Any]:
        """A short transaction without the API timeout (recording an export before it streams)."""
        async with self._place(), read_transaction(self.engine) as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
