"""Retention: login attempts older than a cutoff go, whole partitions at a time where they can.

``login_attempts`` is partitioned by month (app/audit/pipeline/partitions.py). A prune

1. drops every partition that ends at or before the cutoff: detached, then dropped, so no row is
   deleted one by one and nothing is left to vacuum;
2. deletes in short batches only inside the partitions the cutoff falls in (the boundary month,
   the pre-partitioning ``login_attempts_before`` until it ages out as a whole, and the default
   partition if it holds old rows), each batch its own small transaction, oldest rows first;
3. subtracts what it removed from the hourly rollups in the same transaction, so rollups still
   equal the rows.

Detaching: ``DETACH PARTITION ... CONCURRENTLY`` cannot run in a transaction block, and Postgres
(14 to 17) refuses it while the table has a DEFAULT partition, which this schema keeps so that no
insert can fail. So with a default partition the detach is a plain one: ACCESS EXCLUSIVE on
``login_attempts`` for a catalog change (no scan), under a short ``lock_timeout`` so it never queues
in front of traffic for long, retried; it shares its transaction with the drop and the rollup
update. Without a default partition, CONCURRENTLY is used, and a detach left pending by an
interruption is finalised on the next run. Sign-ins never wait either way: they read ``users``,
and the audit writer keeps events in Redis while it waits.

The cutoff is fixed once at the start: exactly the rows with ``created_at`` before it go, and an
interrupted prune has done useful work and can simply be run again.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.audit.pipeline.partitions import DEFAULT_PARTITION, PARENT, Partition, list_partitions

DEFAULT_BATCH_SIZE = 10_000
DURATION = re.compile(r"^\s*(\d+)\s*([dhw]?)\s*$", re.IGNORECASE)
UNITS = {"": "days", "d": "days", "h": "hours", "w": "weeks"}
DETACH_LOCK_TIMEOUT = "1s"
DETACH_ATTEMPTS = 20

# The oldest rows of one partition by their (created_at, id) index, then those rows by ctid (a TID
# scan); what went is subtracted from the rollups in the same statement.
_DELETE_BATCH = """
WITH gone AS (
    DELETE FROM {partition}
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {partition}
        WHERE created_at < $1
        ORDER BY created_at, id
        LIMIT $2))
    RETURNING created_at, success, reason, channel
), counted AS (
    UPDATE login_attempts_hourly AS rollup SET attempts = rollup.attempts - gone_by_hour.attempts
    FROM (SELECT date_trunc('hour', created_at, 'UTC') AS hour, success, reason, channel, count(*) AS attempts
          FROM gone GROUP BY 1, 2, 3, 4) AS gone_by_hour
    WHERE rollup.hour = gone_by_hour.hour AND rollup.success = gone_by_hour.success
      AND rollup.reason = gone_by_hour.reason AND rollup.channel = gone_by_hour.channel
)
SELECT count(*) FROM gone
"""
HAS_OLD_ROWS = "SELECT EXISTS (SELECT 1 FROM {partition} WHERE created_at < $1)"
# Rows in whole hours before the cutoff from the rollups, the rest of the cutoff's hour from the rows.
COUNT_OLD = """
SELECT (SELECT coalesce(sum(attempts), 0) FROM login_attempts_hourly WHERE hour < date_trunc('hour', $1, 'UTC'))
     + (SELECT count(*) FROM login_attempts WHERE created_at >= date_trunc('hour', $1, 'UTC') AND created_at < $1)
"""
ROLLUPS_IN_RANGE = """
SELECT coalesce(sum(attempts), 0) FROM login_attempts_hourly
WHERE ($1::timestamptz IS NULL OR hour >= $1) AND hour < $2
"""
DELETE_ROLLUPS_IN_RANGE = """
DELETE FROM login_attempts_hourly WHERE ($1::timestamptz IS NULL OR hour >= $1) AND hour < $2
"""
DELETE_EMPTY_ROLLUPS = "DELETE FROM login_attempts_hourly WHERE attempts <= 0 AND hour < $1"


def parse_age(text: str) -> datetime.timedelta:
    """``365d``, ``36h``, ``52w`` or a bare number of days; ValueError otherwise (or if not positive)."""
    match = DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an age such as 365d, 36h or 52w")
    return datetime.timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})


@dataclass
class PruneProgress:
    cutoff: datetime.datetime
    deleted: int = 0  # rows gone, in dropped partitions and in batches
    batches: int = 0  # DELETE statements run in boundary partitions
    dropped: list[str] = field(default_factory=list)  # partitions dropped whole
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
    """Remove every row with ``created_at < cutoff`` on an asyncpg connection (not in a transaction).

    ``pause`` seconds between batches leave I/O for the live traffic; ``progress`` hears after each
    dropped partition and each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    state = PruneProgress(cutoff=cutoff)
    started = time.perf_counter()

    def report() -> None:
        state.elapsed = time.perf_counter() - started
        if progress is not None:
            progress(state)

    partitions = await list_partitions(conn)
    has_default = any(p.is_default for p in partitions)
    pending = await _pending_detaches(conn)
    for partition in partitions:
        if not partition.is_default and partition.upper is not None and partition.upper <= cutoff:
            mode = "FINALIZE" if partition.name in pending else "CONCURRENTLY" if not has_default else None
            state.deleted += await _drop_partition(conn, partition, mode)
            state.dropped.append(partition.name)
            report()
    for partition in partitions:
        if partition.upper is not None and partition.upper <= cutoff:
            continue  # dropped above
        if partition.is_default:
            if not await conn.fetchval(HAS_OLD_ROWS.format(partition=DEFAULT_PARTITION), cutoff):
                continue
        elif partition.lower is not None and partition.lower >= cutoff:
            continue  # nothing this old in it
        await _delete_in_batches(conn, partition.name, cutoff, batch_size, pause, state, report)
    await conn.execute(DELETE_EMPTY_ROLLUPS, cutoff)
    state.elapsed = time.perf_counter() - started
    return state


async def _delete_in_batches(
    conn: Any,
    name: str,
    cutoff: datetime.datetime,
    batch_size: int,
    pause: float,
    state: PruneProgress,
    report: Callable[[], None],
) -> None:
    delete = _DELETE_BATCH.format(partition=name)
    while True:
        deleted: int = await conn.fetchval(delete, cutoff, batch_size)
        state.deleted += deleted
        state.batches += 1
        report()
        if deleted < batch_size:
            return
        if pause:
            await asyncio.sleep(pause)


async def _drop_partition(conn: Any, partition: Partition, mode: str | None) -> int:
    """Detach and drop one partition, its rows taken off the rollups; return how many rows it held.

    ``mode``: CONCURRENTLY (no default partition), FINALIZE (a concurrent detach was interrupted),
    or None for a plain detach in the transaction that drops it.
    """
    if mode is not None:
        await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {partition.name} {mode}")
        async with conn.transaction():
            return await _forget(conn, partition)
    for attempt in range(DETACH_ATTEMPTS):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
                await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {partition.name}")
                return await _forget(conn, partition)
        except asyncpg.LockNotAvailableError:
            if attempt == DETACH_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")


async def _forget(conn: Any, partition: Partition) -> int:
    """In the caller's transaction: the detached table dropped, its hours taken off the rollups."""
    assert partition.upper is not None
    rows: int = await conn.fetchval(ROLLUPS_IN_RANGE, partition.lower, partition.upper)
    await conn.execute(DELETE_ROLLUPS_IN_RANGE, partition.lower, partition.upper)
    await conn.execute(f"DROP TABLE {partition.name}")
    return rows


async def _pending_detaches(conn: Any) -> set[str]:
    """Partitions a DETACH ... CONCURRENTLY left half-way (interrupted): FINALIZE finishes them."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'login_attempts'::regclass AND i.inhdetachpending"
    )
    return {row["relname"] for row in rows}
