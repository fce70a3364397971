"""The login budget through the HTTP API: headers, refusals, proxies, PIN lock, registration limit."""

import asyncio

import pytest

from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, e164, new_phone, registered

WRONG = "Wrong-Password-77"


async def login(client, headers=None, **body):
    return await client.post("/api/auth/login", json=body, headers=headers or {})


async def test_five_failures_then_429_with_retry_after_and_draft_headers(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    statuses = []
    first = await login(client, phone_number=phone, password=WRONG)
    assert first.headers["RateLimit"] == '"login";r=4;t=900'  # this failure leaves the window in 900 s
    statuses.append(first.status_code)
    for _ in range(4):
        response = await login(client, phone_number=phone, password=WRONG)
        statuses.append(response.status_code)
        assert response.headers["RateLimit-Policy"] == '"login";q=5;w=900'
    assert statuses == [401] * 5
    assert response.headers["RateLimit"].startswith('"login";r=0;')
    refused = await login(client, phone_number=phone, password=STRONG_PASSWORD)  # even the right password
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited" and body["message"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 900 and body["retry_after"] == retry_after
    assert refused.headers["RateLimit-Policy"] == '"login";q=5;w=900'
    assert refused.headers["RateLimit"] == f'"login";r=0;t={retry_after}'


async def test_refusals_do_not_extend_the_lockout(client):
    phone = new_phone()
    for _ in range(5):
        await login(client, phone_number=phone, password=WRONG)
    first = int((await login(client, phone_number=phone, password=WRONG)).headers["Retry-After"])
    for _ in range(10):
        await login(client, phone_number=phone, password=WRONG)
    later = int((await login(client, phone_number=phone, password=WRONG)).headers["Retry-After"])
    assert later <= first


async def test_success_gives_the_slot_back(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    for _ in range(4):
        await login(client, phone_number=phone, password=WRONG)
    ok = await login(client, phone_number=phone, password=STRONG_PASSWORD)
    assert ok.status_code == 200
    assert ok.headers["RateLimit"].startswith('"login";r=1;')
    assert (await login(client, phone_number=phone, password=WRONG)).status_code == 401
    assert (await login(client, phone_number=phone, password=WRONG)).status_code == 429


async def test_concurrent_wrong_passwords_verify_exactly_the_budget(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    responses = await asyncio.gather(*(login(client, phone_number=phone, password=WRONG) for _ in range(60)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(401) == 5
    assert statuses.count(429) == 55


async def test_invalid_requests_do_not_spend_the_budget(client):
    for _ in range(8):
        response = await login(client, phone_number="not a phone", password=WRONG)
        assert response.status_code == 400
    assert (await login(client, phone_number=new_phone(), password=WRONG)).status_code == 401


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(client):
    for index in range(5):
        await login(client, headers={"X-Forwarded-For": f"203.0.113.{index}"}, phone_number=new_phone(), password=WRONG)
    response = await login(
        client, headers={"X-Forwarded-For": "198.51.100.7"}, phone_number=new_phone(), password=WRONG
    )
    assert response.status_code == 429


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.0/8", "::1/128"]}], indirect=True)
async def test_trusted_proxy_gives_each_client_its_own_budget(client):
    for index in range(5):
        response = await login(
            client, headers={"X-Forwarded-For": "198.51.100.7"}, phone_number=new_phone(), password=WRONG
        )
        assert response.status_code == 401, index
    blocked = await login(client, headers={"X-Forwarded-For": "198.51.100.7"}, phone_number=new_phone(), password=WRONG)
    assert blocked.status_code == 429
    other = await login(client, headers={"X-Forwarded-For": "198.51.100.8"}, phone_number=new_phone(), password=WRONG)
    assert other.status_code == 401


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.0/8", "::1/128"]}], indirect=True)
async def test_pin_lock_follows_the_number_across_clients_and_password_unlocks(client):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    for index in range(5):
        response = await login(
            client, headers={"X-Forwarded-For": f"198.51.100.{index}"}, phone_number=phone, pin="9513"
        )
        assert response.status_code == 401
    locked = await login(client, headers={"X-Forwarded-For": "198.51.100.50"}, phone_number=phone, pin=GOOD_PIN)
    assert locked.status_code == 403
    assert locked.json()["code"] == "pin_locked"
    unlock = await login(
        client, headers={"X-Forwarded-For": "198.51.100.51"}, phone_number=phone, password=STRONG_PASSWORD
    )
    assert unlock.status_code == 200
    again = await login(client, headers={"X-Forwarded-For": "198.51.100.52"}, phone_number=phone, pin=GOOD_PIN)
    assert again.status_code == 200


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.0/8", "::1/128"]}], indirect=True)
async def test_locked_number_does_not_reveal_whether_it_exists(client):
    known, unknown = new_phone(), new_phone()
    await registered(client, phone_number=known, pin=GOOD_PIN)
    answers = []
    for phone in (known, unknown):
        for index in range(6):
            response = await login(
                client, headers={"X-Forwarded-For": f"198.51.{len(answers)}.{index}"}, phone_number=phone, pin="9513"
            )
        answers.append((response.status_code, response.text))
    assert answers[0] == answers[1]
    assert answers[0][0] == 403


async def test_registration_limit_per_client(client):
    for _ in range(10):
        response = await client.post(
            "/api/auth/register",
            json={"name": "Ange Keza", "phone_number": new_phone(), "password": STRONG_PASSWORD},
        )
        assert response.status_code == 201
        assert response.headers["RateLimit-Policy"] == '"register";q=10;w=3600'
    refused = await client.post(
        "/api/auth/register", json={"name": "Ange Keza", "phone_number": new_phone(), "password": STRONG_PASSWORD}
    )
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


async def test_redis_failing_at_the_number_budget_answers_503_and_records_the_attempt(client, settings, db):
    """A Redis error at the per-number budget (after the client's budget was taken) was a 500 with no audit row."""
    phone = new_phone()
    await registered(client, phone_number=phone)
    redis = create_redis(settings)
    try:
        # A key of the wrong type makes the per-number script fail inside Redis, as BUSY or a script error would.
        await redis.set(KeySpace(settings.redis_key_prefix, settings.redis_shards).phone(e164(phone), "password"), "x")
        response = await login(client, phone_number=phone, password="wrong-password-1")
    finally:
        await redis.aclose()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "rate_limiter_unavailable"
    assert response.headers["Retry-After"].isdigit()
    rows = await db.fetch("SELECT reason FROM login_attempts WHERE phone_number = $1", e164(phone))
    assert [row["reason"] for row in rows] == ["limiter_unavailable"]
