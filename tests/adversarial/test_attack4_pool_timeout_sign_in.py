"""Attack 4: sign-in itself meeting a sign-in pool (2 x DATABASE_POOL_SIZE, no overflow) that signed-in
requests hold: two profile writes wait on a row lock, each holding one of the pool's two connections;
a sign-in of another account arriving meanwhile waits for SQLAlchemy's pool timeout and must then be
a 503 with Retry-After (never a 500), and work once the writes are through."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, e164, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow


async def _sign_in_past_a_held_pool(base: str, settings) -> dict[str, object]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        flooder, member = new_phone(), new_phone()
        tokens = {}
        for phone in (flooder, member):
            body = {"name": "Pool Test", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
            response = await http.post("/api/auth/register", json=body)
            assert response.status_code == 201, response.text
            tokens[phone] = {"Authorization": f"Bearer {response.json()['access_token']}"}
        locker = await asyncpg.connect(plain_dsn(settings))
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("SELECT 1 FROM users WHERE phone_number = $1 FOR UPDATE", e164(flooder))

            async def write() -> httpx.Response:
                body = {"data_sharing_consent": True}
                return await http.put("/api/settings/privacy", json=body, headers=tokens[flooder])

            async def sign_in() -> tuple[httpx.Response, float]:
                await asyncio.sleep(1)  # once the writes hold the pool
                started = time.monotonic()
                body = {"phone_number": member, "password": STRONG_PASSWORD}
                response = await http.post("/api/auth/login", json=body)
                return response, time.monotonic() - started

            async def release_later() -> None:
                await asyncio.sleep(36)  # past the pool timeout (30 s)
                await transaction.rollback()

            writes = asyncio.gather(write(), write())
            (w1, w2), (during, waited), _ = await asyncio.gather(writes, sign_in(), release_later())
        finally:
            await locker.close()
        after = await http.post("/api/auth/login", json={"phone_number": member, "password": STRONG_PASSWORD})
        return {"writes": (w1.status_code, w2.status_code), "during": during, "waited": waited, "after": after}


def test_sign_in_past_a_held_pool_is_503_with_retry_after(settings, tmp_path):
    with api_server(settings, tmp_path, DATABASE_POOL_SIZE="1") as base:
        result = asyncio.run(asyncio.wait_for(_sign_in_past_a_held_pool(base, settings), 150))
    during: httpx.Response = result["during"]  # type: ignore[assignment]
    after: httpx.Response = result["after"]  # type: ignore[assignment]
    print("writes", result["writes"], "sign-in during", during.status_code, during.text[:200], result["waited"])
    assert during.status_code in (200, 503), during.text
    if during.status_code == 503:
        assert during.json()["code"] == "database_unavailable"
        assert int(during.headers["retry-after"]) >= 1
    assert after.status_code == 200, after.text
