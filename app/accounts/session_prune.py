"""Retention of ``refresh_tokens``: delete the rows of sessions that ended long enough ago.

A row has ended when it was revoked or when it expired, whichever came first. Ended rows stay for
``AUDIT_RETENTION_DAYS`` (how long the security team keeps the login history: a revoked session's
reason and user agent belong to an investigation of that period), then go. Rows of live sessions are
never touched, so pruning can never end a session. Batches are short transactions, as in the audit
prune: an interrupted prune has done useful work and can be run again.
"""

from __future__ import annotations

import datetime
from typing import Any

DEFAULT_BATCH_SIZE = 10_000
_ENDED_BEFORE = "(revoked_at < $1 OR expires_at < $1)"
DELETE_BATCH = f"""
DELETE FROM refresh_tokens
WHERE id = ANY(ARRAY(SELECT id FROM refresh_tokens WHERE {_ENDED_BEFORE} LIMIT $2))
"""  # noqa: S608 (a constant)
COUNT_ENDED = f"SELECT count(*) FROM refresh_tokens WHERE {_ENDED_BEFORE}"  # noqa: S608 (a constant)


async def count_ended_before(conn: Any, cutoff: datetime.datetime) -> int:
    count: int = await conn.fetchval(COUNT_ENDED, cutoff)
    return count


async def prune_ended_sessions(conn: Any, cutoff: datetime.datetime, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Delete refresh-token rows that ended before ``cutoff``; returns how many went."""
    deleted = 0
    while True:
        status: str = await conn.execute(DELETE_BATCH, cutoff, batch_size)
        batch = int(status.rsplit(" ", 1)[-1])
        deleted += batch
        if batch < batch_size:
            return deleted
