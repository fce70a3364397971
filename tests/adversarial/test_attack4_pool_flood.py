"""Attack 4: the sign-in pool is 2 x DATABASE_POOL_SIZE with no overflow. A flood of signed-in ORM
requests (device list, settings, admin panel) against a real server with DATABASE_POOL_SIZE=2 must
never produce a 500, and sign-in must keep answering (200, or 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import collections
import time

import asyncpg
import httpx
import pytest

from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, e164, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow
FLOOD = 120  # well past the pool (2 x DATABASE_POOL_SIZE = 4)


async def _flood(base: str, settings) -> tuple[collections.Counter, list[tuple[int, float]], list[str]]:  # type: ignore[no-untyped-def]
    limits = httpx.Limits(max_connections=FLOOD + 20, max_keepalive_connections=FLOOD + 20)
    async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits) as http:
        phones = [new_phone() for _ in range(3)]
        for phone in phones:
            body = {"name": "Flood Test", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
            assert (await http.post("/api/auth/register", json=body)).status_code == 201
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            await conn.execute("UPDATE users SET role = 'admin' WHERE phone_number = $1", e164(phones[0]))
        finally:
            await conn.close()
        tokens = []
        for phone in phones[:2]:
            login = await http.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
            tokens.append({"Authorization": f"Bearer {login.json()['access_token']}"})
        paths = ["/api/auth/sessions", "/api/settings/bundle", "/api/settings/privacy", "/api/admin/users/"]

        async def read(n: int) -> httpx.Response:
            path = paths[n % len(paths)]
            headers = tokens[0] if path.startswith("/api/admin") else tokens[n % 2]
            return await http.get(path, headers=headers)

        async def sign_in() -> tuple[int, float]:
            await asyncio.sleep(0.3)
            started = time.monotonic()
            r = await http.post("/api/auth/login", json={"phone_number": phones[2], "password": STRONG_PASSWORD})
            return r.status_code, time.monotonic() - started

        results = await asyncio.gather(*(read(n) for n in range(FLOOD)), *(sign_in() for _ in range(3)))
    reads = results[:FLOOD]
    counts = collections.Counter(r.status_code for r in reads)
    bad = [
        f"{r.request.url.path} {r.status_code} {r.text[:200]}"
        for r in reads
        if r.status_code >= 500 and r.status_code != 503
    ]
    bad += [
        f"503 without Retry-After: {r.text[:200]}"
        for r in reads
        if r.status_code == 503 and "retry-after" not in r.headers
    ]
    return counts, list(results[FLOOD:]), bad


def test_a_flood_of_signed_in_reads_gives_no_500_and_sign_in_answers(settings, tmp_path):
    with api_server(settings, tmp_path, DATABASE_POOL_SIZE="2") as base:
        counts, sign_ins, bad = asyncio.run(asyncio.wait_for(_flood(base, settings), 180))
    print("reads:", dict(counts), "sign-ins:", sign_ins)
    assert bad == []
    for status, _ in sign_ins:
        assert status in (200, 503)
