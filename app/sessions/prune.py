"""Retention of ``sessions``: delete the sessions that ended long enough ago, with their refresh tokens.

A session has ended when it was ended (``ended_at``) or when it expired, whichever came first.
Ended sessions stay for ``AUDIT_RETENTION_DAYS`` (how long the security team keeps the login
history: why a session ended, and from where it was last used, belong to an investigation of that
period), then go, their refresh tokens with them (``ON DELETE CASCADE``). Replaced refresh tokens of
live sessions that expired as long ago go too. Live sessions are never touched, so pruning can
never end one. Batches are short transactions, as in the audit prune: an interrupted prune has done
useful work and can be run again.
"""

from __future__ import annotations

import datetime
from typing import Any

DEFAULT_BATCH_SIZE = 10_000
_ENDED_BEFORE = "(ended_at < $1 OR expires_at < $1)"
DELETE_SESSIONS = f"""
DELETE FROM sessions
WHERE id = ANY(ARRAY(SELECT id FROM sessions WHERE {_ENDED_BEFORE} LIMIT $2))
"""  # noqa: S608 (a constant)
DELETE_EXPIRED_TOKENS = """
DELETE FROM refresh_tokens
WHERE id = ANY(ARRAY(SELECT id FROM refresh_tokens WHERE expires_at < $1 LIMIT $2))
"""
COUNT_ENDED = f"SELECT count(*) FROM sessions WHERE {_ENDED_BEFORE}"  # noqa: S608 (a constant)


async def count_ended_before(conn: Any, cutoff: datetime.datetime) -> int:
    count: int = await conn.fetchval(COUNT_ENDED, cutoff)
    return count


async def _in_batches(conn: Any, statement: str, cutoff: datetime.datetime, batch_size: int) -> int:
    deleted = 0
    while True:
        status: str = await conn.execute(statement, cutoff, batch_size)
        batch = int(status.rsplit(" ", 1)[-1])
        deleted += batch
        if batch < batch_size:
            return deleted


async def prune_ended_sessions(conn: Any, cutoff: datetime.datetime, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Delete sessions that ended before ``cutoff`` (and expired refresh tokens); how many sessions went."""
    sessions = await _in_batches(conn, DELETE_SESSIONS, cutoff, batch_size)
    await _in_batches(conn, DELETE_EXPIRED_TOKENS, cutoff, batch_size)
    return sessions
