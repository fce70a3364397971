"""The outbox backlog: account events committed and not yet on the stream, for ``/health`` and ``/metrics``.

Read from the relay's own partial index (``ix_account_events_unpublished``), so the count costs what
the backlog is long: nothing while the relay keeps up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_BACKLOG = text(
    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) "
    "FROM account_events WHERE published_at IS NULL"
)


async def outbox_backlog(engine: AsyncEngine) -> dict[str, Any]:
    """``{"unpublished": n, "oldest_seconds": age of the oldest unpublished event}``."""
    async with engine.connect() as conn:
        count, oldest = (await conn.execute(_BACKLOG)).one()
    return {"unpublished": int(count), "oldest_seconds": round(float(oldest), 3)}


def outbox_check(engine: AsyncEngine) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The health check: always ``ok`` with the numbers (a slow relay delays events, it breaks no sign-in)."""

    async def outbox() -> dict[str, Any]:
        return await outbox_backlog(engine)

    return outbox
