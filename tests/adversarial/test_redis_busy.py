"""Item 16: a Redis error that is not a connection error (BUSY) on the login path.

It escaped the gate as a 500 with no audit record. Reproduced against a Redis of the test's own
(BUSY blocks every client of a server): a Lua script spins past ``lua-time-limit``, so every
other command meets BUSY until the script is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.exceptions
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.asgi import create_app
from app.core.embedded import EmbeddedRedis
from app.core.settings import Settings
from app.login.gate import LoginGate
from tests.conftest import from_loopback
from tests.helpers import e164, new_phone

SPIN = "local i = 0 while true do i = i + 1 end"


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def busy_client(settings: Settings, own_redis: EmbeddedRedis) -> AsyncIterator[tuple[Any, Redis]]:
    app = create_app(msgspec.structs.replace(settings, redis_url=own_redis.url, audit_writer_enabled=False))
    control = Redis.from_url(own_redis.url)
    await control.config_set("lua-time-limit", 100)
    async with AsyncTestClient(app=from_loopback(LoginGate(app, litestar=app)), raise_server_exceptions=False) as c:
        yield c, control
    await control.aclose()


async def test_busy_redis_answers_503_and_the_attempt_is_recorded(busy_client: Any, db: Any, own_redis: Any) -> None:
    client, control = busy_client
    spinner_connection = Redis.from_url(own_redis.url)
    spinner = asyncio.ensure_future(spinner_connection.eval(SPIN, 0))
    try:
        await asyncio.sleep(0.3)  # past lua-time-limit: every other command now meets BUSY
        with pytest.raises(redis.exceptions.ResponseError, match="BUSY"):
            await control.ping()
        phone = new_phone()
        response = await client.post("/api/auth/login", json={"phone_number": phone, "password": "Wrong-Pass-77"})
    finally:
        with contextlib.suppress(redis.exceptions.RedisError):
            await control.script_kill()
        with contextlib.suppress(redis.exceptions.RedisError):
            await spinner
        await spinner_connection.aclose()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "rate_limiter_unavailable" and response.json()["message"]
    rows = await db.fetch("SELECT reason FROM login_attempts WHERE phone_number = $1", e164(phone))
    assert [row["reason"] for row in rows] == ["limiter_unavailable"]
