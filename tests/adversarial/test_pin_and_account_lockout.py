"""Item 3: a victim locked out of their own account by strangers' wrong guesses.

20 wrong passwords from 4 addresses used to make the owner's correct password answer 429
``account_locked`` for an hour from anywhere, and 5 wrong PINs locked PIN sign-in for 30 days. A
client that signed in to the account recently is now exempt from the per-number password lock
(its own per-client budget still applies), and the PIN lock lifts after ``PIN_LOCK_SECONDS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, new_phone, registered

WRONG = "Wrong-Password-77"
PROXIED = {"trusted_proxies": ["127.0.0.0/8"]}
OWNER_HOME = "2001:db8:41:7::10"  # the owner's phone, on their home /64
OWNER_LATER = "2001:db8:41:7::99"  # the same /64 after an address change (privacy extensions)


async def login(client: Any, address: str, **body: Any) -> Any:
    return await client.post("/api/auth/login", json=body, headers={"X-Forwarded-For": address})


async def lock_the_number(client: Any, phone: str) -> None:
    """The attack: 20 wrong passwords from 4 addresses, 5 each (within every per-client budget)."""
    for attacker in range(4):
        for _ in range(5):
            response = await login(client, f"203.0.113.{attacker + 1}", phone_number=phone, password=WRONG)
            assert response.status_code == 401, response.text


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_the_owner_still_signs_in_from_a_client_that_signed_in_before(client: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    assert (await login(client, OWNER_HOME, phone_number=phone, password=STRONG_PASSWORD)).status_code == 200

    await lock_the_number(client, phone)
    stranger = await login(client, "198.51.100.9", phone_number=phone, password=STRONG_PASSWORD)
    assert stranger.status_code == 429 and stranger.json()["code"] == "account_locked"  # the lock still holds

    owner = await login(client, OWNER_LATER, phone_number=phone, password=STRONG_PASSWORD)
    assert owner.status_code == 200, owner.text


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_a_known_client_keeps_its_own_budget(client: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    assert (await login(client, OWNER_HOME, phone_number=phone, password=STRONG_PASSWORD)).status_code == 200
    await lock_the_number(client, phone)
    answers = [(await login(client, OWNER_HOME, phone_number=phone, password=WRONG)).status_code for _ in range(6)]
    assert answers == [401] * 5 + [429]


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_pin_lock_is_lifted_by_the_owners_password_from_a_known_client(client: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    assert (await login(client, OWNER_HOME, phone_number=phone, pin=GOOD_PIN)).status_code == 200
    await lock_the_number(client, phone)  # the password lock too, so the unlock path is exercised under it
    for attacker in range(5):
        await login(client, f"192.0.2.{attacker + 1}", phone_number=phone, pin="9513")
    assert (await login(client, OWNER_HOME, phone_number=phone, pin=GOOD_PIN)).status_code == 403
    assert (await login(client, OWNER_HOME, phone_number=phone, password=STRONG_PASSWORD)).status_code == 200
    assert (await login(client, OWNER_HOME, phone_number=phone, pin=GOOD_PIN)).status_code == 200


class ManualClock:
    def __init__(self) -> None:
        self.seconds = 1_700_000_000.0

    def __call__(self) -> float:
        return self.seconds


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{settings.redis_key_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_pin_lock_lifts_after_a_day_not_a_month(settings: Settings, redis: Redis) -> None:
    clock = ManualClock()
    limiter = LoginLimiter(redis, settings, clock=clock)
    phone = "+250788555001"
    for _ in range(settings.pin_max_failures):
        decision = await limiter.reserve_account(phone, "pin")
        assert decision.reservation is not None
        await limiter.settle(decision.reservation, "failure")
    locked = await limiter.reserve_account(phone, "pin")
    assert not locked.allowed and locked.retry_after <= 24 * 3600
    clock.seconds += 24 * 3600 + 1  # the default PIN_LOCK_SECONDS, and a second
    assert (await limiter.reserve_account(phone, "pin")).allowed
