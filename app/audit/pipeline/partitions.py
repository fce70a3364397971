"""The monthly partitions of ``login_attempts``: listed, and created ahead of time.

Partition ``login_attempts_yYYYYmMM`` holds one UTC month; ``login_attempts_before`` (the table as
it was before partitioning) everything before its upper bound; ``login_attempts_default`` any
event outside them all (a skewed clock, a late legacy import), so an insert never fails for want
of a partition. The audit writer runs :func:`ensure_partitions` at start and then hourly
(:class:`PartitionMaintenance`), ``ladys-essence audit partitions ensure`` on demand.

A month is created as a plain table and then attached: ATTACH takes SHARE UPDATE EXCLUSIVE on the
parent, so inserts and reads carry on (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).
Rows the default partition holds for that month move into it in the same transaction, as
attaching requires. A short lock timeout keeps maintenance from queueing in front of traffic; it
tries again on its next turn.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline.store import driver_connection

logger = logging.getLogger(__name__)

PARENT = "login_attempts"
DEFAULT_PARTITION = "login_attempts_default"
MONTHS_AHEAD = 3
MAINTENANCE_SECONDS = 3600.0
LOCK_TIMEOUT = "2s"
ADVISORY_KEY = 0x1E55_0016  # one maintainer at a time across writers and the CLI
_MONTHLY = re.compile(r"^login_attempts_y(\d{4})m(\d{2})$")
_BOUNDS = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")

LIST_PARTITIONS = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
       c.reltuples::bigint AS estimated_rows, pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'login_attempts'::regclass
ORDER BY c.relname
"""


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime.datetime | None  # None: MINVALUE (or the default partition)
    upper: datetime.datetime | None  # None: MAXVALUE (or the default partition)
    is_default: bool
    estimated_rows: int
    bytes: int

    def covers(self, start: datetime.datetime, end: datetime.datetime) -> bool:
        """Whether this (non-default) partition overlaps ``[start, end)``."""
        if self.is_default:
            return False
        return (self.lower is None or self.lower < end) and (self.upper is None or start < self.upper)


def month_start(moment: datetime.datetime) -> datetime.datetime:
    moment = moment.astimezone(datetime.UTC)
    return datetime.datetime(moment.year, moment.month, 1, tzinfo=datetime.UTC)


def next_month(start: datetime.datetime) -> datetime.datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def partition_name(start: datetime.datetime) -> str:
    return f"login_attempts_y{start.year:04d}m{start.month:02d}"


def _bound(text: str) -> datetime.datetime | None:
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.datetime.fromisoformat(text.strip("'")).astimezone(datetime.UTC)


async def list_partitions(conn: Any) -> list[Partition]:
    """Every partition with its range (read with the session in UTC, as bounds print in it)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = await conn.fetch(LIST_PARTITIONS)
    partitions = []
    for row in rows:
        match = _BOUNDS.match(row["bound"])
        lower, upper = (_bound(match.group(1)), _bound(match.group(2))) if match else (None, None)
        partitions.append(
            Partition(row["name"], lower, upper, match is None, max(0, row["estimated_rows"]), row["bytes"])
        )
    return sorted(
        partitions, key=lambda p: (p.is_default, p.lower or datetime.datetime.min.replace(tzinfo=datetime.UTC))
    )


async def ensure_partitions(
    conn: Any, months_ahead: int = MONTHS_AHEAD, now: datetime.datetime | None = None
) -> list[str]:
    """Create the partitions of this month and the next ``months_ahead`` that are missing; return their names."""
    start = month_start(now or datetime.datetime.now(datetime.UTC))
    created = []
    for _ in range(months_ahead + 1):
        end = next_month(start)
        if await _create_month(conn, start, end):
            created.append(partition_name(start))
        start = end
    return created


async def _create_month(conn: Any, start: datetime.datetime, end: datetime.datetime) -> bool:
    name = partition_name(start)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_KEY)
        partitions = await list_partitions(conn)
        if any(p.covers(start, end) for p in partitions):
            return False
        has_default = any(p.is_default for p in partitions)
        await conn.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        if has_default:
            # Attaching checks the default holds nothing of this month: move what it holds first.
            # Locking it now keeps a late insert from landing there between the move and the check.
            await conn.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE")
            moved = await conn.execute(
                f"""WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= $1 AND created_at < $2
                                   RETURNING *)
                    INSERT INTO {name} SELECT * FROM moved""",  # noqa: S608 (names are constants)
                start,
                end,
            )
            if moved != "INSERT 0 0":
                logger.info("audit partitions: moved %s rows of %s from the default partition", moved.split()[-1], name)
        bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        await conn.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}")
    logger.info("audit partitions: created %s", name)
    return True


class PartitionMaintenance:
    """The writer's turn at keeping partitions ahead: at start, then every ``interval`` seconds.

    Failures are logged and retried next turn: months are created well ahead, so a missed turn
    costs nothing, and the default partition takes any row meanwhile.
    """

    def __init__(self, engine: AsyncEngine, months_ahead: int = MONTHS_AHEAD, interval: float = MAINTENANCE_SECONDS):
        self.engine = engine
        self.months_ahead = months_ahead
        self.interval = interval
        self._next = 0.0

    async def run_if_due(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval

        try:
            async with driver_connection(self.engine) as conn:
                await ensure_partitions(conn, self.months_ahead)
        except Exception as exc:  # maintenance must never stop the writer
            logger.warning("audit partitions: maintenance failed (%s: %s); next turn retries", type(exc).__name__, exc)
