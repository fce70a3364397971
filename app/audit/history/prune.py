"""Retention: delete login attempts older than a cutoff, in short batches.

Each batch is its own small transaction deleting the oldest ``batch_size`` rows (found on the
``(created_at, id)`` index), so no statement holds locks for long, the audit writer keeps inserting
throughout, and an interrupted prune has done useful work and can simply be run again. The cutoff
is fixed once at the start: exactly the rows with ``created_at`` before it go.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.postgres import row_count

DEFAULT_BATCH_SIZE = 10_000
DURATION = re.compile(r"^\s*(\d+)\s*([dhw]?)\s*$", re.IGNORECASE)
UNITS = {"": "days", "d": "days", "h": "hours", "w": "weeks"}

# The ids of the oldest rows, then those rows by primary key: an index range scan and an index
# lookup per row, whatever the table's size.
DELETE_BATCH = """
DELETE FROM login_attempts
WHERE id = ANY(ARRAY(
    SELECT id FROM login_attempts
    WHERE created_at < $1
    ORDER BY created_at, id
    LIMIT $2))
"""
COUNT_OLD = "SELECT count(*) FROM login_attempts WHERE created_at < $1"


def parse_age(text: str) -> datetime.timedelta:
    """``365d``, ``36h``, ``52w`` or a bare number of days; ValueError otherwise (or if not positive)."""
    match = DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an age such as 365d, 36h or 52w")
    return datetime.timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})


@dataclass
class PruneProgress:
    cutoff: datetime.datetime
    deleted: int = 0
    batches: int = 0
    elapsed: float = 0.0


async def count_older_than(conn: Any, cutoff: datetime.datetime) -> int:
    count: int = await conn.fetchval(COUNT_OLD, cutoff)
    return count


async def prune(
    conn: Any,
    cutoff: datetime.datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause: float = 0.0,
    progress: Callable[[PruneProgress], None] | None = None,
) -> PruneProgress:
    """Delete every row with ``created_at < cutoff`` on an asyncpg connection (not in a transaction).

    ``pause`` seconds between batches leave I/O for the live traffic; ``progress`` hears after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    state = PruneProgress(cutoff=cutoff)
    started = time.perf_counter()
    while True:
        status: str = await conn.execute(DELETE_BATCH, cutoff, batch_size)
        deleted = row_count(status)
        state.deleted += deleted
        state.batches += 1
        state.elapsed = time.perf_counter() - started
        if progress is not None:
            progress(state)
        if deleted < batch_size:
            return state
        if pause:
            await asyncio.sleep(pause)
