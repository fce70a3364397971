"""The limits against a real server: 2 uvicorn workers, real Redis we can stop, real Postgres."""

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest

from app.embedded import EmbeddedRedis, free_port
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, plain_dsn
from tests.helpers import STRONG_PASSWORD

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
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": redis_server.url,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "WARNING",
        "AUDIT_FLUSH_MS": "50",
    }
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError((tmp_path / "server.log").read_text())
        time.sleep(0.2)
    yield base
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


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
