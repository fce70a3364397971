"""/health sees what stops sign-in: a lock on users, an audit writer that has fallen behind."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import new_phone

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("settings", [{"health_sign_in_threshold_ms": 200}], indirect=True)
async def test_health_is_degraded_while_users_is_locked(client, db):
    assert (await client.get("/health")).status_code == 200
    await asyncio.sleep(1.1)  # past the health cache
    async with db.transaction():
        await db.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        response = await client.get("/health")
        body = response.json()
        assert response.status_code == 503, body
        assert body["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "degraded"
        assert any(reason.startswith("database: sign-in path") for reason in body["reasons"]), body["reasons"]
    await asyncio.sleep(1.1)
    recovered = await client.get("/health")
    assert recovered.status_code == 200 and recovered.json()["reasons"] == []


@pytest.mark.parametrize("settings", [{"health_audit_lag_seconds": 0.5, "audit_writer_enabled": False}], indirect=True)
async def test_health_is_degraded_while_the_audit_lags(client):
    # An attempt whose audit event nobody writes (no writer in this process).
    await client.post("/api/auth/login", json={"phone_number": new_phone(), "password": "Wrong-Password-77"})
    await asyncio.sleep(1.2)
    response = await client.get("/health")
    body = response.json()
    assert response.status_code == 503, body
    assert body["checks"]["audit"]["status"] == "degraded"
    assert body["checks"]["audit"]["lag_seconds"] > 0.5
    assert any(reason.startswith("audit: audit lag") for reason in body["reasons"]), body["reasons"]
