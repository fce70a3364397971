"""The partitioned login_attempts and its hourly rollups, on real Postgres.

Partitions made here for far months stay for the rest of the run (the shared test database is
truncated between tests, not re-migrated): harmless, since every month is a valid place for a row.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.audit.pipeline.events import CHANNELS, REASONS, LoginEvent
from app.audit.pipeline.partitions import ensure_partitions, list_partitions, month_start, next_month, partition_name
from app.audit.pipeline.store import INSERT_METHODS, InsertMethod, store_events
from app.core.settings import Settings, asyncpg_url
from tests.conftest import plain_dsn
from tests.factories import login_event

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    assert settings.database_url
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=2)
    yield engine
    await engine.dispose()


RollupKey = tuple[datetime.datetime, bool, str, str]  # hour, success, reason, channel


async def rollups(db: asyncpg.Connection) -> Counter[RollupKey]:
    rows = await db.fetch(
        "SELECT hour, success, reason, channel, attempts FROM login_attempts_hourly WHERE attempts > 0"
    )
    return Counter({(r["hour"], r["success"], r["reason"], r["channel"]): r["attempts"] for r in rows})


async def grouped_rows(db: asyncpg.Connection) -> Counter[RollupKey]:
    rows = await db.fetch(
        """SELECT date_trunc('hour', created_at, 'UTC') AS hour, success, reason, channel, count(*) AS attempts
           FROM login_attempts GROUP BY 1, 2, 3, 4"""
    )
    return Counter({(r["hour"], r["success"], r["reason"], r["channel"]): r["attempts"] for r in rows})


def dated(n: int, moment: datetime.datetime) -> LoginEvent:
    return msgspec.structs.replace(login_event(n), created_at=moment)


@pytest.mark.parametrize("method", INSERT_METHODS)
async def test_a_redelivered_event_is_written_once_and_counted_once(
    engine: AsyncEngine, db: asyncpg.Connection, method: InsertMethod
) -> None:
    """Across partitions and the default one: the key (event_id, created_at) absorbs every redelivery."""
    moments = [NOW, NOW - datetime.timedelta(days=40), NOW + datetime.timedelta(days=3650)]
    events = [dated(n, moments[n % 3]) for n in range(30)]
    assert await store_events(engine, events[:12], method) == 12
    assert await store_events(engine, events, method) == 18
    assert await store_events(engine, events[5:9], method) == 0
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 30
    assert await db.fetchval("SELECT count(*) FROM login_attempts_default") == 10  # ten years ahead
    assert await rollups(db) == await grouped_rows(db)
    assert sum((await rollups(db)).values()) == 30


event_sets = st.lists(
    st.tuples(
        st.integers(0, 40),  # which event: the same number twice is a redelivery
        st.sampled_from([-900, -30, -1, 0, 0, 0, 1, 70, 4000]),  # days from now: far past, far future, default
        st.integers(0, 23 * 60),  # minutes into the day
        st.sampled_from(REASONS),
        st.sampled_from(CHANNELS),
    ),
    max_size=60,
)


@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(event_sets, min_size=1, max_size=4), method=st.sampled_from(INSERT_METHODS))
def test_rollups_equal_a_group_by_over_the_rows(
    settings: Settings, batches: list[list[tuple[int, int, int, str, str]]], method: InsertMethod
) -> None:
    """Random events in random batches, redeliveries included: rollups == GROUP BY over the rows."""
    start = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    minted: dict[int, LoginEvent] = {}

    def event(n: int, days: int, minutes: int, reason: str, channel: str) -> LoginEvent:
        # An event is minted once: a redelivery carries the same id and created_at.
        if n not in minted:
            moment = start + datetime.timedelta(days=days, minutes=minutes)
            minted[n] = msgspec.structs.replace(
                dated(n, moment), reason=reason, success=reason == "ok", channel=channel
            )
        return minted[n]

    async def run() -> None:
        assert settings.database_url
        engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=1)
        db = await asyncpg.connect(plain_dsn(settings))
        try:
            await db.execute("TRUNCATE login_attempts, login_attempts_hourly")
            for batch in batches:
                events = list({e.event_id: e for e in (event(*item) for item in batch)}.values())
                await store_events(engine, events, method)
            assert await rollups(db) == await grouped_rows(db)
            assert await db.fetchval("SELECT count(*) FROM login_attempts") == len(minted)
        finally:
            await db.close()
            await engine.dispose()

    asyncio.run(run())


async def test_ensure_creates_months_ahead_once(db: asyncpg.Connection) -> None:
    far = month_start(NOW + datetime.timedelta(days=31 * 30))  # beyond what the migration made
    created = await ensure_partitions(db, months_ahead=2, now=far)
    assert created == [
        partition_name(far),
        partition_name(next_month(far)),
        partition_name(next_month(next_month(far))),
    ]
    assert await ensure_partitions(db, months_ahead=2, now=far) == []
    names = {p.name for p in await list_partitions(db)}
    assert set(created) <= names
    # Nothing is missing between now and the migration's horizon (the writer made them at start).
    assert await ensure_partitions(db, months_ahead=3) == []


async def test_a_month_created_late_takes_its_rows_from_the_default_partition(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """A late import lands in the default partition; creating its month moves the rows there, none lost."""
    month = month_start(NOW + datetime.timedelta(days=31 * 50))
    events = [dated(n, month + datetime.timedelta(hours=n)) for n in range(5)]
    assert await store_events(engine, events) == 5
    assert await db.fetchval("SELECT count(*) FROM login_attempts_default WHERE created_at >= $1", month) == 5
    assert await ensure_partitions(db, months_ahead=0, now=month) == [partition_name(month)]
    assert await db.fetchval(f"SELECT count(*) FROM {partition_name(month)}") == 5  # noqa: S608
    assert await db.fetchval("SELECT count(*) FROM login_attempts_default WHERE created_at >= $1", month) == 0
    # The rows keep their key: a redelivery is still absorbed.
    assert await store_events(engine, events) == 0
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 5
    assert await rollups(db) == await grouped_rows(db)


def test_partitions_commands(settings: Settings, tmp_path) -> None:
    from tests.audit.history.test_cli import run_cli

    result = run_cli(settings, tmp_path, ["audit", "partitions", "ensure", "--months-ahead", "2"])
    assert result.exit_code == 0, result.output
    assert "exists" in result.stdout  # the migration made three months ahead
    # Six months ahead (this test's own: the other tests of this module make months 30 and 50 ahead).
    far = run_cli(settings, tmp_path, ["audit", "partitions", "ensure"], AUDIT_PARTITIONS_AHEAD="6")
    assert far.exit_code == 0 and "created" in far.stdout
    beyond = month_start(NOW)
    for _ in range(6):
        beyond = next_month(beyond)
    assert partition_name(beyond) in far.stdout
    listing = run_cli(settings, tmp_path, ["audit", "partitions", "list"])
    assert listing.exit_code == 0
    assert partition_name(beyond) in listing.stdout and "DEFAULT" in listing.stdout
    assert "login_attempts_before" in listing.stdout and "MINVALUE" in listing.stdout
    bad = run_cli(settings, tmp_path, ["audit", "partitions", "ensure", "--months-ahead", "0"])
    assert bad.exit_code == 2 and "months-ahead" in bad.output
