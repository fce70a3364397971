"""The audit pipeline against real Redis and Postgres: publish, write once, batch, drain, recover."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.audit.pipeline.events import LoginEvent, stream_fields
from app.audit.pipeline.metrics import AuditMetrics, unwritten_events
from app.audit.pipeline.publisher import AuditPublisher, AuditUnavailable
from app.audit.pipeline.store import INSERT_METHODS, InsertMethod, store_events
from app.audit.pipeline.writer import AuditWriter
from app.core.embedded import free_port
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings, asyncpg_url
from tests.factories import login_event


@dataclass
class Pipeline:
    settings: Settings
    redis: Redis
    engine: AsyncEngine
    keys: KeySpace
    metrics: AuditMetrics
    publisher: AuditPublisher

    def writer(self, **options: object) -> AuditWriter:
        settings = msgspec.structs.replace(self.settings, **options)
        return AuditWriter(self.redis, self.keys, self.engine, settings, self.metrics)

    async def stream_length(self) -> int:
        return await unwritten_events(self.redis, self.keys)


@pytest.fixture
async def pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    assert settings.database_url
    redis = create_redis(settings)
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=4)
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    metrics = AuditMetrics()
    yield Pipeline(settings, redis, engine, keys, metrics, AuditPublisher(redis, keys, engine, metrics))
    await redis.delete(*keys.audit_streams(), keys.audit_dead_letter)
    await redis.aclose()
    await engine.dispose()


async def add_to_streams(pipeline: Pipeline, events: list[LoginEvent]) -> None:
    """What the limiter's Lua script does, pipelined: XADD e=<json> into the client's shard stream."""
    pipe = pipeline.redis.pipeline(transaction=False)
    for index, event in enumerate(events):
        pipe.xadd(pipeline.keys.audit_stream(pipeline.keys.shard_of(f"client-{index}")), stream_fields(event))
    await pipe.execute()


async def stored_ids(db: asyncpg.Connection) -> list[str]:
    return [str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM login_attempts")]


async def test_published_events_are_written_once_with_every_column(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    events = [login_event(n) for n in range(120)]
    for index, event in enumerate(events):
        await pipeline.publisher.publish(event, f"client-{index % 9}")
    assert await pipeline.stream_length() == 120
    backlog = await pipeline.writer().backlog()
    assert backlog["stream_length"] == 120 and backlog["pending"] == 0 and backlog["lag_seconds"] >= 0

    await pipeline.writer().run_until_drained(within_seconds=20)

    rows = {str(row["event_id"]): row for row in await db.fetch("SELECT * FROM login_attempts")}
    assert len(rows) == 120
    for event in events:
        row = rows[event.event_id]
        assert row["created_at"] == event.created_at
        assert (row["phone_number"], row["success"], row["reason"]) == (event.phone_number, event.success, event.reason)
        assert (row["auth_method"], row["user_id"], row["request_id"]) == (
            event.auth_method,
            event.user_id,
            event.request_id,
        )
        assert row["ip_address"] == ipaddress.ip_address(event.ip_address)
        assert row["user_agent"] == event.user_agent
    assert pipeline.metrics.value("events_published") == 120
    assert pipeline.metrics.value("events_written") == 120
    assert await pipeline.stream_length() == 0
    assert await pipeline.writer().backlog() == {"stream_length": 0, "pending": 0, "lag_seconds": 0.0}


async def test_an_event_delivered_twice_is_stored_once(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    event, other = login_event(1), login_event(2)
    await pipeline.publisher.publish(event, "client-a")
    await pipeline.publisher.publish(event, "client-a")  # a retried XADD
    await pipeline.publisher.publish(other, "client-b")
    await pipeline.publisher.store_directly(other)  # the request fell back after its XADD timed out
    await pipeline.writer().run_until_drained(within_seconds=20)
    assert sorted(await stored_ids(db)) == sorted([event.event_id, other.event_id])
    assert pipeline.metrics.value("events_duplicate") == 2
    assert pipeline.metrics.value("events_fallback") == 1


@pytest.mark.parametrize("method", INSERT_METHODS)
async def test_every_insert_method_is_atomic_and_idempotent(
    pipeline: Pipeline, db: asyncpg.Connection, method: InsertMethod
) -> None:
    events = [login_event(n) for n in range(50)]
    assert await store_events(pipeline.engine, events[:20], method) == 20
    # A batch overlapping what is stored: only the new rows count, nothing is doubled.
    assert await store_events(pipeline.engine, events, method) == 30
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM login_attempts") == 50
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 50


async def test_batches_never_exceed_audit_batch_size(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    await add_to_streams(pipeline, [login_event(n) for n in range(100)])
    await pipeline.writer(audit_batch_size=7).run_until_drained(within_seconds=20)
    # Rows committed by one statement share a transaction id.
    per_transaction = [row["n"] for row in await db.fetch("SELECT count(*) AS n FROM login_attempts GROUP BY xmin")]
    assert sum(per_transaction) == 100
    assert max(per_transaction) <= 7
    assert len(per_transaction) >= math.ceil(100 / 7)


async def test_a_trickle_of_events_is_written_in_few_batches(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    """A batch fills for up to AUDIT_FLUSH_MS: events arriving one by one share a COPY."""
    writer = pipeline.writer(audit_batch_size=500, audit_flush_ms=1000)
    writer.start()
    try:
        events = [login_event(n) for n in range(60)]
        for index, event in enumerate(events):
            await pipeline.publisher.publish(event, f"client-{index}")
            await asyncio.sleep(0.005)
        await writer.run_until_drained(within_seconds=20)
    finally:
        await writer.stop()
    per_transaction = [row["n"] for row in await db.fetch("SELECT count(*) AS n FROM login_attempts GROUP BY xmin")]
    assert sum(per_transaction) == 60
    # Read one by one they would be ~60 statements; a slow machine may split the trickle in two or three.
    assert len(per_transaction) <= 3, per_transaction


async def test_each_batch_is_a_stretch_of_time_across_the_streams(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    """Batches are cut from a read in event order, not stream by stream.

    The streams interleave in time; a batch of one stream's entries would spread its inserts over the
    whole key range of the time and event-id indexes (measured: 30-40% more Postgres time per row).
    """
    await add_to_streams(pipeline, [login_event(n) for n in range(2000)])  # spread over the shard streams
    await pipeline.writer(audit_batch_size=250).run_until_drained(within_seconds=20)
    batches = await batches_as_inserted(db)
    assert sum(map(len, batches)) == 2000 and len(batches) >= 8
    assert_time_ordered(batches)


async def test_batches_stay_in_time_order_across_reads(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    """The partial batch a read leaves is merged with the next read, whose head may be older."""
    older, newer = [login_event(n) for n in range(250)], [login_event(1000 + n) for n in range(30)]
    pipe = pipeline.redis.pipeline(transaction=False)
    for stream, events in ((pipeline.keys.audit_stream(2), older), (pipeline.keys.audit_stream(9), newer)):
        for event in events:
            pipe.xadd(stream, stream_fields(event))
    await pipe.execute()
    # Reads of 100 per stream: 100 older + the 30 newer, then 100 older, then 50 older.
    await pipeline.writer(audit_batch_size=100, audit_flush_ms=200).run_until_drained(within_seconds=20)
    batches = await batches_as_inserted(db)
    assert sorted(map(len, batches), reverse=True) == [100, 100, 80]
    assert_time_ordered(batches)


async def batches_as_inserted(db: asyncpg.Connection) -> list[list[str]]:
    """Event ids per statement (rows committed together share a transaction id), in insert order."""
    rows = await db.fetch("SELECT xmin::text::bigint AS tx, event_id::text AS event_id FROM login_attempts ORDER BY id")
    batches: dict[int, list[str]] = {}
    for row in rows:
        batches.setdefault(row["tx"], []).append(row["event_id"])
    return list(batches.values())


def assert_time_ordered(batches: list[list[str]]) -> None:
    for ids in batches:
        assert ids == sorted(ids)  # inserted in time order
    spans = sorted((ids[0], ids[-1]) for ids in batches)
    assert all(last < next_first for (_, last), (next_first, _) in itertools.pairwise(spans)), spans


async def test_a_backlog_goes_out_in_full_batches(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    """Catching up, the writer reads on at once instead of waiting AUDIT_FLUSH_MS for a batch to fill."""
    hot = [login_event(n) for n in range(1300)]  # one client's burst: all in one shard stream
    pipe = pipeline.redis.pipeline(transaction=False)
    for event in hot:
        pipe.xadd(pipeline.keys.audit_stream(3), stream_fields(event))
    for n in range(100):
        pipe.xadd(pipeline.keys.audit_stream(5), stream_fields(login_event(2000 + n)))
    await pipe.execute()
    await pipeline.writer(audit_batch_size=500, audit_flush_ms=500).run_until_drained(within_seconds=20)
    per_transaction = [row["n"] for row in await db.fetch("SELECT count(*) AS n FROM login_attempts GROUP BY xmin")]
    # 500 + 500 + 400; waiting for the partial batch after each read would have written 500, 500, 100, 300.
    assert sorted(per_transaction, reverse=True) == [500, 500, 400]


async def test_stop_writes_everything_it_read(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    await add_to_streams(pipeline, [login_event(n) for n in range(3000)])
    writer = pipeline.writer(audit_batch_size=50)
    writer.start()
    while await db.fetchval("SELECT count(*) FROM login_attempts") == 0:
        await asyncio.sleep(0.005)
    await writer.stop()
    written = await db.fetchval("SELECT count(*) FROM login_attempts")
    backlog = await writer.backlog()
    # Nothing read is left half-done: every event is either written or still unread in Redis.
    assert backlog["pending"] == 0
    assert 0 < written < 3000  # it did stop half-way
    assert written + backlog["stream_length"] == 3000
    assert pipeline.metrics.value("events_written") == written


async def test_writers_sharing_the_group_write_each_event_once(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    events = [login_event(n) for n in range(4000)]
    await add_to_streams(pipeline, events)
    writers = [pipeline.writer(audit_batch_size=100) for _ in range(3)]
    assert len({writer.consumer for writer in writers}) == 3
    await asyncio.gather(*(writer.run_until_drained(within_seconds=30) for writer in writers))
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 4000
    assert sorted(await stored_ids(db)) == sorted(event.event_id for event in events)


async def test_writer_recreates_a_lost_consumer_group(pipeline: Pipeline, db: asyncpg.Connection) -> None:
    writer = pipeline.writer()
    writer.start()
    await add_to_streams(pipeline, [login_event(n) for n in range(10)])
    while await db.fetchval("SELECT count(*) FROM login_attempts") < 10:
        await asyncio.sleep(0.02)
    # What a Redis restart without persistence looks like: streams and group gone.
    await pipeline.redis.delete(*pipeline.keys.audit_streams())
    await add_to_streams(pipeline, [login_event(n) for n in range(10, 30)])
    await writer.run_until_drained(within_seconds=20)
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 30


async def test_lag_reports_the_oldest_unwritten_event(pipeline: Pipeline) -> None:
    await add_to_streams(pipeline, [login_event(1)])
    await asyncio.sleep(0.3)
    backlog = await pipeline.writer().backlog()
    assert backlog["stream_length"] == 1
    assert 0.25 <= backlog["lag_seconds"] < 5
    assert pipeline.metrics.value("lag_seconds") == backlog["lag_seconds"]


async def test_publish_without_redis_writes_directly(settings: Settings, db: asyncpg.Connection) -> None:
    assert settings.database_url
    dead_redis = create_redis(msgspec.structs.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    engine = create_async_engine(asyncpg_url(settings.database_url))
    metrics = AuditMetrics()
    publisher = AuditPublisher(dead_redis, KeySpace(settings.redis_key_prefix), engine, metrics)
    try:
        event = login_event(7)
        await publisher.publish(event, "client-a")
        assert await stored_ids(db) == [event.event_id]
        assert metrics.value("events_fallback") == 1 and metrics.value("events_published") == 0
    finally:
        await dead_redis.aclose()
        await engine.dispose()


async def test_publish_refuses_when_neither_store_takes_the_event(settings: Settings) -> None:
    dead_redis = create_redis(msgspec.structs.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    dead_postgres = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    publisher = AuditPublisher(dead_redis, KeySpace(settings.redis_key_prefix), dead_postgres, AuditMetrics())
    try:
        with pytest.raises(AuditUnavailable) as raised:
            await publisher.publish(login_event(8), "client-a")
        assert raised.value.status_code == 503 and raised.value.code == "audit_unavailable"
    finally:
        await dead_redis.aclose()
        await dead_postgres.dispose()
