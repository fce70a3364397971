"""The limits against a real server: 2 uvicorn workers, real Redis we can stop, real Postgres."""

import asyncio
import time

import asyncpg
import httpx
import pytest

from app.core.embedded import EmbeddedRedis
from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD
from tests.servers import api_server

pytestmark = pytest.mark.slow
WRONG = "Wrong-Password-77"


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(settings, redis_server, tmp_path):
    # The real argon2 cost: the 5 verified guesses are real work, the 195 refusals must not be.
    with api_server(
        settings, tmp_path, redis_url=redis_server.url, workers=2, ARGON2_MEMORY_KIB="19456", ARGON2_TIME_COST="2"
    ) as base:
        yield base


async def audited(settings, phone, expected, timeout=30.0):
    """Rows in login_attempts for this phone, once the writer has caught up (or the timeout)."""
    conn = await asyncpg.connect(plain_dsn(settings))
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT event_id, reason FROM login_attempts WHERE phone_number = $1", phone)
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_200_concurrent_wrong_passwords_over_2_workers_verify_exactly_5(server, settings):
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server, timeout=60, limits=limits) as http:
        register = await http.post(
            "/api/auth/register",
            json={"name": "Keza Ineza", "phone_number": "0788 610 610", "password": STRONG_PASSWORD},
        )
        assert register.status_code == 201, register.text
        body = {"phone_number": "0788610610", "password": WRONG}
        responses = await asyncio.gather(*(http.post("/api/auth/login", json=body) for _ in range(200)))
    statuses = [response.status_code for response in responses]
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == 195
    rows = await audited(settings, "+250788610610", 200)
    assert len(rows) == 200
    assert len({row["event_id"] for row in rows}) == 200
    reasons = sorted(row["reason"] for row in rows)
    assert reasons.count("invalid_credentials") == 5 and reasons.count("rate_limited") == 195


async def test_redis_stopped_mid_run_gives_503_not_500_nor_unlimited_guesses(server, settings, redis_server):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        phone = "0788620620"
        before = await http.post("/api/auth/login", json={"phone_number": phone, "password": WRONG})
        assert before.status_code == 401
        redis_server.stop()
        during = [
            await http.post("/api/auth/login", json={"phone_number": phone, "password": WRONG}) for _ in range(20)
        ]
        assert {response.status_code for response in during} == {503}
        assert {response.json()["code"] for response in during} == {"rate_limiter_unavailable"}
        deadline = time.monotonic() + 5  # health results are cached for a second
        while (health := await http.get("/health")).status_code != 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert health.json()["checks"]["redis"]["status"] == "error"
        redis_server.start()
        refused = len(during)
        deadline = time.monotonic() + 20
        while True:
            after = await http.post("/api/auth/login", json={"phone_number": phone, "password": WRONG})
            if after.status_code != 503 or time.monotonic() > deadline:
                break
            refused += 1  # still reconnecting
            await asyncio.sleep(0.3)
        assert after.status_code == 401
    rows = await audited(settings, "+250788620620", refused + 2)
    reasons = [row["reason"] for row in rows]
    assert reasons.count("limiter_unavailable") == refused  # written straight to Postgres while Redis was down
    assert reasons.count("unknown_account") == 2
    assert len(rows) == refused + 2
