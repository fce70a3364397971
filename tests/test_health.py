import asyncio
from datetime import UTC, datetime

import pytest

from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.db.config import sqlalchemy_config
from app.events.relay import AccountEventRelay
from app.health import CACHE_SECONDS
from tests.helpers import registered


async def test_health_reports_each_dependency(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["message"] == "Lady's Essence API is running"
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


async def test_health_ignores_stale_authorization(client):
    response = await client.get("/health", headers={"Authorization": "Bearer expired.garbage.token"})
    assert response.status_code == 200


@pytest.mark.parametrize("settings", [{"account_events_relay_enabled": False}], indirect=True)
async def test_health_and_metrics_report_the_outbox_backlog(client, settings):
    for _ in range(2):
        await registered(client)
    await asyncio.sleep(0.2)
    body = (await client.get("/health")).json()
    outbox = body["checks"]["outbox"]
    assert outbox["status"] == "ok" and outbox["unpublished"] == 2 and outbox["oldest_seconds"] >= 0.2
    metrics = (await client.get("/metrics")).text
    assert "ladys_essence_auth_account_events_unpublished 2.0" in metrics

    engine = sqlalchemy_config(settings, pool=False).get_engine()
    redis = create_redis(settings)
    try:
        await AccountEventRelay(redis, engine, KeySpace(settings.redis_key_prefix), settings).publish_pending()
    finally:
        await redis.aclose()
        await engine.dispose()
    await asyncio.sleep(CACHE_SECONDS)
    outbox = (await client.get("/health")).json()["checks"]["outbox"]
    assert (outbox["unpublished"], outbox["oldest_seconds"]) == (0, 0)
    assert "ladys_essence_auth_account_events_unpublished 0.0" in (await client.get("/metrics")).text
