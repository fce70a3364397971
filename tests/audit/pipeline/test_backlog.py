"""AUDIT_MAX_BACKLOG: with no writer running, the audit streams stop at the bound and nothing is lost.

Reproduces the outage the bound exists for: a writer that is down while an attacker keeps being
refused. Every attempt must still reach ``login_attempts`` exactly once, and Redis must not grow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from app.audit.pipeline.events import new_event
from app.audit.pipeline.metrics import AuditMetrics, shared_metrics
from app.audit.pipeline.publisher import AuditPublisher
from app.audit.pipeline.writer import AuditWriter
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings, asyncpg_url
from app.health import CACHE_SECONDS
from tests.helpers import new_phone

WRONG = "Wrong-Password-77"
# Two shards of 2 entries each: the client's stream is full after two attempts.
BOUNDED = {"audit_writer_enabled": False, "audit_max_backlog": 4, "redis_shards": 2}


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = create_redis(settings)
    yield client
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    await client.delete(*keys.audit_streams(), keys.audit_dead_letter)
    await client.aclose()


async def stream_lengths(redis: Redis, settings: Settings) -> list[int]:
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    return [await redis.xlen(stream) for stream in keys.audit_streams()]


async def rows_by_request(db: Any) -> dict[str, int]:
    rows = await db.fetch("SELECT request_id, count(*) AS n FROM login_attempts GROUP BY request_id")
    return {row["request_id"]: row["n"] for row in rows}


def direct_writes() -> float:
    return shared_metrics().value("events_backlog_direct")


@pytest.mark.parametrize("settings", [BOUNDED], indirect=True)
async def test_refusals_past_the_bound_go_to_postgres_once_each(client, settings, redis, db):
    phone = new_phone()
    direct_before = direct_writes()
    # Five verified failures (the settle script carries their events), then refusals at the gate
    # (the reserve script carries them), many at once.
    for n in range(5):
        response = await client.post(
            "/api/auth/login", json={"phone_number": phone, "password": WRONG}, headers={"X-Request-ID": f"fail-{n}"}
        )
        assert response.status_code == 401
    refused = await asyncio.gather(
        *(
            client.post(
                "/api/auth/login", json={"phone_number": phone, "password": WRONG}, headers={"X-Request-ID": f"r-{n}"}
            )
            for n in range(40)
        )
    )
    assert [response.status_code for response in refused] == [429] * 40
    sent = {f"fail-{n}" for n in range(5)} | {f"r-{n}" for n in range(40)}

    lengths = await stream_lengths(redis, settings)
    assert max(lengths) <= 2 and sum(lengths) <= settings.audit_max_backlog
    assert sum(lengths) == 2  # one client: one shard stream, filled to its share
    stored = await rows_by_request(db)
    assert set(stored.values()) == {1}
    assert len(stored) == len(sent) - 2  # everything the full stream did not take
    assert direct_writes() - direct_before == len(sent) - 2

    health = await client.get("/health")
    assert health.status_code == 200  # logins still work: degraded audit path, not down
    audit = health.json()["checks"]["audit"]
    assert audit["backlog_full"] is True
    assert audit["max_backlog"] == 4 and audit["stream_length"] == 2
    metrics = (await client.get("/metrics")).text
    assert "ladys_essence_auth_audit_backlog_full 1.0" in metrics
    assert "ladys_essence_auth_audit_events_backlog_direct_total" in metrics

    # The writer comes back: what the streams held joins the rest, and each attempt is one row.
    engine = create_async_engine(asyncpg_url(settings.database_url or ""), pool_size=2)
    try:
        keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
        writer = AuditWriter(redis, keys, engine, settings, AuditMetrics())
        await writer.run_until_drained(within_seconds=20)
    finally:
        await engine.dispose()
    stored = await rows_by_request(db)
    assert stored == dict.fromkeys(sent, 1)
    await asyncio.sleep(CACHE_SECONDS)  # /health answers from its cache for this long
    assert (await client.get("/health")).json()["checks"]["audit"]["backlog_full"] is False


@pytest.mark.parametrize("settings", [BOUNDED], indirect=True)
async def test_publisher_stops_appending_at_the_bound(settings, redis, db):
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    engine = create_async_engine(asyncpg_url(settings.database_url or ""), pool_size=2)
    metrics = AuditMetrics()
    publisher = AuditPublisher(redis, keys, engine, metrics, max_backlog=settings.audit_max_backlog)
    events = [new_event(phone_number=new_phone(), success=False, reason="invalid_request") for _ in range(30)]
    try:
        await asyncio.gather(*(publisher.publish(event, "one-client") for event in events))
        lengths = await stream_lengths(redis, settings)
        assert sorted(lengths) == [0, 2]
        assert metrics.value("events_published") == 2
        assert metrics.value("events_backlog_direct") == 28
        assert metrics.value("events_fallback") == 0
        await AuditWriter(redis, keys, engine, settings, metrics).run_until_drained(within_seconds=20)
    finally:
        await engine.dispose()
    rows = await db.fetch("SELECT event_id::text AS id, count(*) AS n FROM login_attempts GROUP BY event_id")
    assert {row["id"]: row["n"] for row in rows} == {event.event_id: 1 for event in events}


def test_the_bound_is_a_setting():
    assert Settings.from_env({"AUDIT_MAX_BACKLOG": "250"}, app_env="test").audit_max_backlog == 250
    with pytest.raises(Exception, match="AUDIT_MAX_BACKLOG"):
        msgspec.structs.replace(Settings.from_env({}, app_env="test"), audit_max_backlog=0).validated()
