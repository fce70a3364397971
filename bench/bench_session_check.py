"""Signed-in request cost: the live-session check vs the revocation-only check it replaced.

Authenticated ``GET /api/auth/profile`` through the ASGI test client, in alternating rounds: one
with ``RefreshTokenService.is_live`` as it is (EXISTS a live row of the family), one with the
former check (NOT EXISTS a revoked row). Both are one indexed EXISTS; the ratio should be ~1.

    python -m bench.bench_session_check [--requests 300] [--rounds 5] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import exists, select

from app.accounts.service import RefreshTokenService
from app.asgi import create_app
from app.db.models import RefreshToken
from app.login.gate import LoginGate
from bench.common import bench_parser, servers

LIVE_CHECK = RefreshTokenService.is_live
PASSWORD = "Umuganda-Kigali-42"


async def revocation_only(self: RefreshTokenService, family_id: uuid.UUID) -> bool:
    """The check before issue 17: a session is fine unless one of its rows is revoked."""
    revoked = await self.repository.session.scalar(
        select(exists().where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_not(None)))
    )
    return not revoked


async def timed_round(client: AsyncTestClient[Any], headers: dict[str, str], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        response = await client.get("/api/auth/profile", headers=headers)
        assert response.status_code == 200, response.text
    return (time.perf_counter() - start) / requests


async def run(settings: Any, requests: int, rounds: int) -> None:
    app = create_app(
        msgspec.structs.replace(
            settings, argon2_memory_kib=1024, argon2_time_cost=1, register_limit=1000, log_level="WARNING"
        )
    )
    async with AsyncTestClient(app=LoginGate(app, litestar=app)) as client:
        # Sessions of other accounts, so the family index has rows to look past.
        for index in range(50):
            await client.post(
                "/api/auth/register",
                json={"name": "Bench User", "phone_number": f"078{8000000 + index}", "password": PASSWORD},
            )
        login = {"phone_number": "0788000000", "password": PASSWORD}
        account = (await client.post("/api/auth/login", json=login)).json()
        headers = {"Authorization": f"Bearer {account['access_token']}"}
        await timed_round(client, headers, requests // 5)  # warm-up
        times: dict[str, list[float]] = {"live": [], "revocation_only": []}
        for _ in range(rounds):
            for name, check in (("live", LIVE_CHECK), ("revocation_only", revocation_only)):
                RefreshTokenService.is_live = check  # type: ignore[method-assign]
                times[name].append(await timed_round(client, headers, requests))
        RefreshTokenService.is_live = LIVE_CHECK  # type: ignore[method-assign]
    live, before = statistics.median(times["live"]), statistics.median(times["revocation_only"])
    print(f"GET /api/auth/profile, {rounds} alternating rounds of {requests} requests (median per request):")
    print(f"  revocation-only check (before): {before * 1000:.2f} ms")
    print(f"  live-session check (after):     {live * 1000:.2f} ms")
    print(f"  after / before: {live / before:.2f}x")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with servers(args.database_url, args.redis_url) as settings:
        asyncio.run(run(settings, args.requests, args.rounds))


if __name__ == "__main__":
    main()
