"""/health sees what stops sign-in: a lock on users, an audit writer that has fallen behind."""

from __future__ import annotations

import asyncio

import pytest

from tests.asgi import in_loop_client
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

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


@pytest.mark.parametrize("settings", [{"database_lock_timeout_ms": 300}], indirect=True)
async def test_requests_behind_a_lock_on_users_are_a_503_not_a_wait_for_ever(app, db):
    """The session statements (sign-in's account lookup, the signed-in check, refresh) waited as long
    as ``users`` stayed locked: no pool timeout applies to a statement already sent. Now each is a 503
    ``busy`` with Retry-After past DATABASE_LOCK_TIMEOUT_MS, and the refused sign-in is still audited."""
    async with in_loop_client(app) as client:
        account = await registered(client)
        phone = new_phone()
        async with db.transaction():
            await db.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            answers = await asyncio.wait_for(
                asyncio.gather(
                    client.post(
                        "/api/auth/login",
                        json={"phone_number": phone, "password": STRONG_PASSWORD},
                        headers={"X-Request-ID": f"locked-{phone}"},
                    ),
                    client.get("/api/auth/profile", headers=bearer(account["access_token"])),
                    client.post("/api/auth/refresh", headers=bearer(account["refresh_token"])),
                ),
                30,  # without the lock timeout they wait for the lock this transaction holds: fail, not hang
            )
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "busy"
            assert int(answer.headers["retry-after"]) >= 1
        assert (await client.get("/api/auth/profile", headers=bearer(account["access_token"]))).status_code == 200
        for _ in range(100):  # the audit writer's next batch
            reason = await db.fetchval("SELECT reason FROM login_attempts WHERE request_id = $1", f"locked-{phone}")
            if reason is not None:
                break
            await asyncio.sleep(0.1)
        assert reason is not None, "the sign-in refused behind the lock was not audited"
