"""Item 4: a reservation lapsing while its verification waits in the hash queue.

With ``RATE_LIMIT_RESERVATION_SECONDS=1`` and slow hashing, three waves of 5 guesses from one
address, a second apart, verified 11 credentials against a budget of 5: the first wave's
reservations lapsed while their hashes were still queued, and the next wave took their slots. A
verification must never start once its reservation can no longer cover it; the refused attempts
answer 503 ``busy`` with Retry-After, and each is in the audit trail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.audit.pipeline.events import decode_event
from app.core.redis_keys import STREAM_FIELD, KeySpace
from app.core.settings import Settings
from tests.helpers import new_phone
from tests.servers import api_server

SLOW_HASHING = {
    "RATE_LIMIT_RESERVATION_SECONDS": "1",
    "ARGON2_MEMORY_KIB": "19456",
    # Around half a second a verification on an idle core (more under load): five always take longer
    # than the one-second reservation, whatever the machine.
    "ARGON2_TIME_COST": "40",
    "HASH_THREADS": "1",
    "AUDIT_WRITER_ENABLED": "false",  # the events stay in the streams, where the test reads them
}

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with api_server(settings, tmp_path, **SLOW_HASHING) as base:
        yield base


async def audit_reasons(settings: Settings) -> list[str]:
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    try:
        reasons = []
        for stream in KeySpace(settings.redis_key_prefix, settings.redis_shards).audit_streams():
            for _, fields in await redis.xrange(stream):
                reasons.append(decode_event(fields[STREAM_FIELD.encode()]).reason)
        return reasons
    finally:
        await redis.aclose()


async def test_three_waves_never_verify_more_than_the_budget(server: str, settings: Settings) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=60) as http:

        async def wave() -> list[httpx.Response]:
            guesses = [{"phone_number": new_phone(), "password": "Wrong-Password-77"} for _ in range(5)]
            return list(await asyncio.gather(*(http.post("/api/auth/login", json=body) for body in guesses)))

        waves = []
        for _ in range(3):
            waves.append(asyncio.ensure_future(wave()))
            await asyncio.sleep(1.1)  # past the previous wave's reservation lapse
        answers = [response for responses in await asyncio.gather(*waves) for response in responses]

    verified = [response for response in answers if response.status_code == 401]
    assert len(verified) <= settings.rate_limit_login_failures, [r.status_code for r in answers]
    busy = [response for response in answers if response.status_code == 503]
    assert busy, [r.status_code for r in answers]
    for response in busy:
        assert response.json()["code"] == "busy" and response.json()["message"]
        assert int(response.headers["Retry-After"]) >= 1
    reasons = await audit_reasons(settings)
    assert len(reasons) == len(answers)  # every attempt recorded once
    assert reasons.count("busy") == len(busy)
