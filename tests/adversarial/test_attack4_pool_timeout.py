"""Attack 4: the sign-in pool is now 2 x DATABASE_POOL_SIZE with max_overflow=0. When every one of
its connections is held (here: each signed-in request waits on a lock of ``users``), the requests
past the pool wait for SQLAlchemy's pool timeout; that must be a 503 with Retry-After, never a 500,
and sign-in must work again once the lock is gone."""

from __future__ import annotations

import asyncio
import collections

import asyncpg
import httpx
import pytest

from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow
REQUESTS = 8  # DATABASE_POOL_SIZE=1: a sign-in pool of 2


async def _held_pool(base: str, settings) -> tuple[list[httpx.Response], httpx.Response]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        phone = new_phone()
        body = {"name": "Pool Test", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
        registered = await http.post("/api/auth/register", json=body)
        assert registered.status_code == 201, registered.text
        headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
        locker = await asyncpg.connect(plain_dsn(settings))
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

            async def release_later() -> None:
                await asyncio.sleep(34)  # past the pool timeout (30 s)
                await transaction.rollback()

            reads = asyncio.gather(*(http.get("/api/auth/sessions", headers=headers) for _ in range(REQUESTS)))
            responses, _ = await asyncio.gather(reads, release_later())
        finally:
            await locker.close()
        signed_in = await http.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
        return list(responses), signed_in


def test_a_held_sign_in_pool_answers_503_with_retry_after_not_500(settings, tmp_path):
    with api_server(settings, tmp_path, DATABASE_POOL_SIZE="1") as base:
        responses, signed_in = asyncio.run(asyncio.wait_for(_held_pool(base, settings), 150))
    counts = collections.Counter(r.status_code for r in responses)
    print("statuses:", dict(counts), [r.text[:160] for r in responses if r.status_code != 200])
    assert not [r.text for r in responses if r.status_code >= 500 and r.status_code != 503], dict(counts)
    for response in responses:
        if response.status_code == 503:
            assert response.json()["code"] == "database_unavailable"
            assert int(response.headers["retry-after"]) >= 1
    assert signed_in.status_code == 200, signed_in.text
