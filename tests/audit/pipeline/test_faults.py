"""Nothing lost: the audit pipeline through a killed writer, a killed Redis, a stopped Postgres, bad entries.

Real processes and servers on 127.0.0.1 (or a Unix socket): the writer runs as ``python -m
app.audit.pipeline.worker`` and is killed with SIGKILL; Redis and Postgres are servers of the test's own, so
they can be killed and restarted on the same address. Every test ends by itself within seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from app.audit.pipeline.events import LoginEvent, encode_event, stream_fields
from app.audit.pipeline.metrics import GROUP, AuditMetrics, unwritten_events
from app.audit.pipeline.publisher import AuditPublisher
from app.audit.pipeline.writer import AuditWriter
from app.core.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from app.core.postgres import plain_dsn
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import PROJECT_ROOT, Settings, asyncpg_url
from app.db import migrations
from tests.factories import login_event

pytestmark = pytest.mark.slow


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def add_to_streams(redis: Redis, keys: KeySpace, events: list[LoginEvent]) -> None:
    pipe = redis.pipeline(transaction=False)
    for index, event in enumerate(events):
        pipe.xadd(keys.audit_stream(keys.shard_of(f"client-{index}")), stream_fields(event))
    await pipe.execute()


async def assert_stored_exactly_once(dsn: str, events: list[LoginEvent]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        total, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT event_id) FROM login_attempts")
        stored = {str(row["event_id"]) for row in await conn.fetch("SELECT event_id FROM login_attempts")}
    finally:
        await conn.close()
    assert (total, distinct) == (len(events), len(events))
    assert stored == {event.event_id for event in events}


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """Server data outside pytest's basetemp, which a concurrent pytest run may prune under us."""
    with tempfile.TemporaryDirectory(prefix="le-audit-faults-") as path:
        yield Path(path)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = create_redis(settings)
    yield client
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    await client.delete(*keys.audit_streams(), keys.audit_dead_letter)
    await client.aclose()


# ---- 1. the writer is killed mid-batch --------------------------------------------------------------


def start_worker(settings: Settings, consumer: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "REDIS_SHARDS": str(settings.redis_shards),
        "AUDIT_BATCH_SIZE": "100",
        "AUDIT_CLAIM_IDLE_MS": "1000",
        "AUDIT_CONSUMER_NAME": consumer,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": settings.jwt_secret or "",
        "PIN_PEPPER": settings.pin_pepper or "",
        "LOG_LEVEL": "INFO",
    }
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "app.audit.pipeline.worker"], cwd=PROJECT_ROOT, env=env, stdout=output, stderr=output
        )


async def test_writer_killed_mid_batch_loses_and_doubles_nothing(
    settings: Settings, redis: Redis, db: asyncpg.Connection, private_dir: Path
) -> None:
    assert settings.database_url
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    events = [login_event(n, success=False, reason="invalid_credentials") for n in range(5000)]
    await add_to_streams(redis, keys, events)
    log = private_dir / "workers.log"
    victim = start_worker(settings, "victim", log)
    rescuer: subprocess.Popen[bytes] | None = None
    lock = await asyncpg.connect(plain_dsn(settings.database_url))
    try:

        async def some_rows_written() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM login_attempts"))

        await eventually(some_rows_written, 20, "the first worker to write rows")
        # Freeze the table: the worker's next batch blocks inside Postgres, uncommitted.
        locked = lock.transaction()
        await locked.start()
        await lock.execute("LOCK TABLE login_attempts IN EXCLUSIVE MODE")

        async def a_batch_is_in_flight() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'login_attempts' AND NOT l.granted"
                )
            )

        await eventually(a_batch_is_in_flight, 10, "a batch insert to wait on the lock")
        await asyncio.sleep(0.5)  # let the worker fill its queue: it then holds the most unwritten entries
        written_before_kill = await lock.fetchval("SELECT count(*) FROM login_attempts")
        assert 0 < written_before_kill < len(events)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        await locked.rollback()

        pending = await redis.xpending(keys.audit_stream(0), GROUP)
        victim_pending = sum([(await redis.xpending(stream, GROUP))["pending"] for stream in keys.audit_streams()])
        assert victim_pending > 0, pending  # the dead worker held entries it never acknowledged

        rescuer = start_worker(settings, "rescuer", log)

        async def drained() -> bool:
            return await unwritten_events(redis, keys) == 0

        await eventually(drained, 30, "the second worker to claim and write the rest")
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(15) == 0, log.read_text()[-2000:]
        assert "claimed" in log.read_text()
    finally:
        await lock.close()
        for process in (victim, rescuer):
            if process and process.poll() is None:
                process.kill()
                process.wait()
    await assert_stored_exactly_once(plain_dsn(settings.database_url), events)


# ---- 2. Redis is killed during a burst of publishes -----------------------------------------------


async def test_redis_killed_during_a_burst_loses_no_event(
    settings: Settings, db: asyncpg.Connection, private_dir: Path
) -> None:
    assert settings.database_url
    server = EmbeddedRedis(private_dir / "redis", port=free_port(), appendonly=True)
    server.start()
    own = msgspec.structs.replace(settings, redis_url=server.url, audit_claim_idle_ms=1000)
    keys = KeySpace(own.redis_key_prefix, own.redis_shards)
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=4)
    publish_redis, writer_redis = create_redis(own), create_redis(own)
    metrics = AuditMetrics()
    publisher = AuditPublisher(publish_redis, keys, engine, metrics)
    writer = AuditWriter(writer_redis, keys, engine, own, metrics)
    events: list[LoginEvent] = []
    try:
        writer.start()

        async def burst(count: int) -> None:
            for _ in range(count):
                event = login_event(len(events), success=False, reason="invalid_credentials")
                events.append(event)
                await publisher.publish(event, f"client-{len(events) % 50}")  # must never raise

        await burst(800)
        assert server.process is not None
        server.process.kill()  # SIGKILL: no shutdown, no final AOF rewrite
        server.process.wait()
        await burst(300)  # Redis refuses: straight to Postgres
        assert metrics.value("events_fallback") >= 300
        restarted = asyncio.ensure_future(asyncio.to_thread(server.start))
        while not restarted.done():
            await burst(10)
        await restarted
        published_before, fallback_before = metrics.value("events_published"), metrics.value("events_fallback")
        await burst(800)
        # Back to the stream (a pooled connection that died with the old server may fail once).
        assert metrics.value("events_published") - published_before >= 799
        assert metrics.value("events_fallback") - fallback_before <= 1

        await writer.run_until_drained(within_seconds=30)
    finally:
        await writer.stop()
        await publish_redis.aclose()
        await writer_redis.aclose()
        await engine.dispose()
        server.stop()
    await assert_stored_exactly_once(plain_dsn(settings.database_url), events)


# ---- 3. Postgres is down while events keep coming -------------------------------------------------


async def test_postgres_outage_keeps_events_pending_until_it_returns(
    settings: Settings, redis: Redis, private_dir: Path
) -> None:
    postgres = EmbeddedPostgres(private_dir / "postgres", database="audit_outage")
    url = await asyncio.to_thread(postgres.start)
    own = msgspec.structs.replace(settings, database_url=url)
    await asyncio.to_thread(migrations.upgrade, own)
    keys = KeySpace(own.redis_key_prefix, own.redis_shards)
    engine = create_async_engine(asyncpg_url(url), pool_size=2)
    metrics = AuditMetrics()
    writer = AuditWriter(redis, keys, engine, own, metrics)
    before, during = (
        [login_event(n, success=False, reason="invalid_credentials") for n in range(200)],
        [login_event(n, success=False, reason="invalid_credentials") for n in range(200, 500)],
    )
    try:
        writer.start()
        await add_to_streams(redis, keys, before)

        async def first_events_written() -> bool:
            return await unwritten_events(redis, keys) == 0

        await eventually(first_events_written, 20, "the writer to store the first events")
        await asyncio.to_thread(postgres.stop)
        await add_to_streams(redis, keys, during)

        async def writer_is_retrying() -> bool:
            return metrics.value("write_errors") >= 2

        await eventually(writer_is_retrying, 15, "the writer to fail and retry")
        backlog = await writer.backlog()
        assert backlog["stream_length"] == len(during), backlog  # nothing acknowledged, nothing deleted
        assert backlog["pending"] > 0, backlog  # read, held, retried
        assert writer.stopping is False and metrics.value("events_written") == len(before)

        postgres = EmbeddedPostgres(private_dir / "postgres", database="audit_outage")
        assert await asyncio.to_thread(postgres.start) == url
        await writer.run_until_drained(within_seconds=30)
        # A commit whose reply was cut by the shutdown comes back as a duplicate, not a second row.
        handled = metrics.value("events_written") + metrics.value("events_duplicate")
        assert handled == len(before) + len(during)
        await assert_stored_exactly_once(plain_dsn(url), before + during)
    finally:
        await writer.stop()
        await engine.dispose()
        await asyncio.to_thread(postgres.stop)


# ---- 4. entries that are not login events ----------------------------------------------------------


async def test_malformed_entries_are_dead_lettered_and_good_ones_still_written(
    settings: Settings, redis: Redis, db: asyncpg.Connection
) -> None:
    assert settings.database_url
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    stream = keys.audit_stream(3)
    wrong_reason = msgspec.structs.replace(
        login_event(0, success=False, reason="invalid_credentials"), reason="totally_fine"
    )
    bad_ids = [
        await redis.xadd(stream, {"e": b"garbage"}),
        await redis.xadd(stream, {"x": b"no event here"}),
        await redis.xadd(stream, {"e": encode_event(wrong_reason)}),
    ]
    good = [login_event(n, success=False, reason="invalid_credentials") for n in range(1, 21)]
    await add_to_streams(redis, keys, good)
    engine = create_async_engine(asyncpg_url(settings.database_url))
    metrics = AuditMetrics()
    try:
        await AuditWriter(redis, keys, engine, settings, metrics).run_until_drained(within_seconds=20)
    finally:
        await engine.dispose()

    dead = await redis.xrange(keys.audit_dead_letter)
    assert [fields[b"id"] for _, fields in dead] == bad_ids
    assert {fields[b"stream"] for _, fields in dead} == {stream.encode()}
    assert dead[0][1][b"field:e"] == b"garbage" and b"malformed" in dead[0][1][b"error"]
    assert dead[1][1][b"field:x"] == b"no event here"
    assert b"totally_fine" in dead[2][1][b"error"] and dead[2][1][b"field:e"] == encode_event(wrong_reason)
    assert metrics.value("events_dead_lettered") == 3
    assert await unwritten_events(redis, keys) == 0
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == len(good)
