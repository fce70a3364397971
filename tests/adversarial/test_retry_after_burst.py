"""Item 19: a 429 during a burst must say when a slot really frees, not when reservations lapse.

200 concurrent wrong guesses from one client, against a real server: 5 are verified and settle as
failures, which free their slots a window after they settle. The 195 refused while those were
still reservations were told ``Retry-After: 30`` (the reservation lapse), and came back to be
refused again for the rest of the window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from tests.servers import api_server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    # The real argon2 cost, so the five verifications are still in flight when the others arrive.
    with api_server(settings, tmp_path, ARGON2_MEMORY_KIB="19456", ARGON2_TIME_COST="2") as base:
        yield base


async def test_retry_after_of_a_burst_is_when_a_slot_really_frees(server: str, settings: Settings) -> None:
    body = {"phone_number": "0788630630", "password": "Wrong-Password-77"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server, timeout=60, limits=limits) as http:

        async def guess() -> tuple[float, httpx.Response]:
            response = await http.post("/api/auth/login", json=body)
            return time.time(), response

        answers = await asyncio.gather(*(guess() for _ in range(200)))
    budget = settings.rate_limit_login_failures
    assert sum(response.status_code == 401 for _, response in answers) == budget
    refused = [(at, response) for at, response in answers if response.status_code == 429]
    assert len(refused) == 200 - budget

    # When the client's first slot really frees: its oldest failure leaving the window, read from Redis.
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    try:
        key = KeySpace(settings.redis_key_prefix, settings.redis_shards).client("127.0.0.1", "login")
        failures = await redis.zrangebyscore(key, "(0", "+inf", withscores=True)
    finally:
        await redis.aclose()
    assert len(failures) == budget
    window = settings.rate_limit_login_window_seconds
    frees_at = min(score for _, score in failures) / 1000 + window

    ceiling = window + settings.rate_limit_reservation_seconds
    for answered_at, response in refused:
        retry_after = int(response.headers["Retry-After"])
        assert retry_after <= ceiling
        assert answered_at + retry_after >= frees_at - 1, (retry_after, round(frees_at - answered_at))
        assert response.headers["RateLimit"] == f'"login";r=0;t={retry_after}'
        assert response.json()["retry_after"] == retry_after
