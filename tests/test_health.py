from datetime import UTC, datetime


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
