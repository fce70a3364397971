"""The Flask-era database, read only: one read-only, repeatable-read transaction, rows streamed in id order.

Every read of one run sees the same snapshot (both passes over ``users`` and the history), and the
transaction is ``READ ONLY``, so Postgres itself refuses any write to the source. Rows come through
a server-side cursor ``batch_size`` at a time: memory stays flat whatever the table's size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

USER_COLUMNS = (
    "id",
    "name",
    "phone_number",
    "email",
    "password_hash",
    "user_type",
    "is_active",
    "created_at",
    "updated_at",
    "pin_hash",
    "enable_pin_auth",
    "personal_cycle_length",
    "personal_period_length",
    "has_provided_cycle_info",
    "last_activity",
    "current_session_data",
    "session_timeout_minutes",
    "account_type",
    "is_phone_verified",
    "allow_parent_access",
    "data_sharing_consent",
    "notification_preferences",
)
# The time comes as timestamptz: naive Flask values are UTC, and Postgres attaches the zone cheaper than Python.
ATTEMPT_COLUMNS = ("id", "phone_number", "success", "ip_address", "user_agent", "created_at AT TIME ZONE 'UTC'")
KEY_COLUMNS = ("id", "phone_number", "email", "created_at", "last_activity", "pin_hash")


class SourceError(Exception):
    """The source is not a Flask-era database this import can read."""


def redacted(url: str) -> str:
    """The URL without its password, for the report and the query log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def plain_dsn(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class Source:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def check(self) -> None:
        for table, columns in (("users", USER_COLUMNS), ("login_attempts", ATTEMPT_COLUMNS)):
            found = {
                row["column_name"]
                for row in await self._conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
                )
            }
            missing = [c.split()[0] for c in columns if c.split()[0] not in found]
            if missing:
                raise SourceError(f"the source has no {table} table with the Flask-era columns (missing: {missing})")

    async def count(self, table: str) -> int:
        assert table in ("users", "login_attempts")
        value: int = await self._conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
        return value

    async def max_user_id(self) -> int:
        value: int | None = await self._conn.fetchval("SELECT max(id) FROM users")
        return value or 0

    async def batches(self, table: str, columns: tuple[str, ...], batch_size: int) -> AsyncIterator[list[Any]]:
        """Rows of ``table`` in id order, ``batch_size`` at a time, through a server-side cursor."""
        assert table in ("users", "login_attempts")
        query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY id"  # noqa: S608 (fixed names)
        cursor = await self._conn.cursor(query)
        while True:
            rows = await cursor.fetch(batch_size)
            if not rows:
                return
            yield rows


@asynccontextmanager
async def open_source(url: str) -> AsyncIterator[Source]:
    try:
        conn = await asyncpg.connect(plain_dsn(url))
    except (OSError, asyncpg.PostgresError) as exc:
        raise SourceError(f"cannot connect to the source {redacted(url)}: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            source = Source(conn)
            await source.check()
            yield source
    finally:
        await conn.close()
