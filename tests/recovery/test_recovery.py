"""Self-service recovery end to end: SMS -> app, USSD code -> app, USSD PIN reset; the codes' rules."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from app.core.redis_keys import KeySpace
from tests.audit.history.support import staff_headers
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, e164, new_phone, registered
from tests.recovery.stand_in import SmsStandIn
from tests.recovery.support import (
    audit_rows,
    code_in,
    complete,
    gateway_headers,
    new_session,
    start,
    ussd_code,
)

NEW_PASSWORD = "Inzira-Nshya-2026"
NEW_PIN = "3816"


async def login(client: Any, phone: str, **secret: str) -> Any:
    return await client.post("/api/auth/login", json={"phone_number": phone, **secret})


async def refresh(client: Any, token: str) -> Any:
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


# ---- SMS -> app ---------------------------------------------------------------------------------


async def test_a_code_by_sms_signs_in_with_a_new_password_and_ends_every_other_session(
    client: Any, db: Any, sms: SmsStandIn
) -> None:
    phone = new_phone()
    first = await registered(client, phone_number=phone)
    assert (await start(client, phone)).status_code == 202
    [received] = sms.to(e164(phone))
    assert received.api_key == "stand-in-key"
    assert received.form["username"] == "sandbox" and received.form["from"] == "LadysEssence"
    assert len(received.form["message"]) <= 160

    response = await complete(client, phone, received.code, new_password=NEW_PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"] and body["refresh_token"] and body["user_id"] == first["user_id"]

    assert (await refresh(client, first["refresh_token"])).status_code == 401  # the other session ended
    assert (await refresh(client, body["refresh_token"])).status_code == 200
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 401
    assert (await login(client, phone, password=NEW_PASSWORD)).status_code == 200

    ended = await db.fetchval(
        "SELECT count(*) FROM sessions WHERE user_id = $1 AND end_reason = 'recovery'", first["user_id"]
    )
    assert ended == 1
    sent = await audit_rows(db, "sms", 2)
    assert [(row["reason"], row["success"]) for row in sent] == [("code_sent", True), ("recovered_unverified", True)]
    assert {row["phone_number"] for row in sent} == {e164(phone)}


async def test_a_recent_sign_in_changes_settings_without_the_current_password(client: Any, sms: SmsStandIn) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    await start(client, phone)
    tokens = (await complete(client, phone, sms.to(e164(phone))[0].code, new_password=NEW_PASSWORD)).json()
    response = await client.put(
        "/api/auth/profile",
        json={"new_pin": "5927"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 200, response.text


# ---- squatting ----------------------------------------------------------------------------------


async def test_the_numbers_owner_takes_back_an_account_a_stranger_registered_on_it(
    client: Any, db: Any, sms: SmsStandIn
) -> None:
    phone = new_phone()
    squatter = await registered(client, phone_number=phone, pin=GOOD_PIN)  # anyone may type any number
    assert not await db.fetchval("SELECT is_phone_verified FROM users WHERE id = $1", squatter["user_id"])

    await start(client, phone)  # the SMS reaches the SIM's holder, not the squatter
    owner = await complete(client, phone, sms.to(e164(phone))[0].code, new_pin=NEW_PIN)
    assert owner.status_code == 200, owner.text

    assert (await refresh(client, squatter["refresh_token"])).status_code == 401
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 401
    assert (await login(client, phone, pin=NEW_PIN)).status_code == 200
    assert await db.fetchval("SELECT is_phone_verified FROM users WHERE id = $1", squatter["user_id"])
    rows = await audit_rows(db, "sms", 2)
    assert rows[-1]["reason"] == "recovered_unverified" and rows[-1]["user_id"] == squatter["user_id"]


# ---- USSD code -> app, and the USSD PIN reset ---------------------------------------------------


async def test_a_ussd_code_signs_in_from_the_app_with_a_new_pin(client: Any, db: Any, settings: Any) -> None:
    gateway = await gateway_headers(settings)
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    answer = await ussd_code(client, gateway, phone)
    assert answer.status_code == 200, answer.text
    message = answer.json()["message"]
    assert len(message) <= 160

    response = await complete(client, phone, code_in(message), new_pin=NEW_PIN)
    assert response.status_code == 200, response.text
    assert (await login(client, phone, pin=NEW_PIN)).status_code == 200
    assert (await refresh(client, account["refresh_token"])).status_code == 401

    rows = await audit_rows(db, "ussd", 2)
    assert [row["reason"] for row in rows] == ["code_sent", "recovered_unverified"]
    assert rows[0]["service_name"].startswith("ussd-gateway-") and rows[0]["session_id"]


async def test_ussd_recovery_code_for_a_number_without_an_account_says_so_in_a_menu_line(
    client: Any, settings: Any
) -> None:
    gateway = await gateway_headers(settings)
    answer = await ussd_code(client, gateway, new_phone())
    assert answer.status_code == 404 and len(answer.json()["message"]) <= 160
    refused = await client.post("/api/ussd/recovery-code", json={"phone_number": new_phone(), "session_id": "x"})
    assert refused.status_code == 401  # no gateway credential


async def reset_pin(client: Any, gateway: dict[str, str], phone: str, answer: str, pin: str = NEW_PIN) -> Any:
    body = {"phone_number": phone, "session_id": new_session(), "new_pin": pin, "answer": answer}
    return await client.post("/api/ussd/reset-pin", json=body, headers=gateway)


async def test_ussd_pin_reset_asks_the_year_of_birth_and_ends_every_session(
    client: Any, db: Any, settings: Any
) -> None:
    gateway = await gateway_headers(settings)
    phone = new_phone()
    account = await registered(client, phone_number=phone, pin=GOOD_PIN, date_of_birth="2009-03-14")
    wrong = await reset_pin(client, gateway, phone, "Aline")  # the first name is not enough when a year is known
    assert wrong.status_code == 401
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 200  # nothing changed

    right = await reset_pin(client, gateway, phone, "2009")
    assert right.status_code == 200, right.text
    assert len(right.json()["message"]) <= 160
    assert (await login(client, phone, pin=NEW_PIN)).status_code == 200
    assert (await refresh(client, account["refresh_token"])).status_code == 401
    rows = await audit_rows(db, "ussd", 2)
    assert [row["reason"] for row in rows] == ["knowledge_failed", "recovered_unverified"]


async def test_ussd_pin_reset_falls_back_to_the_first_name_and_locks_after_three_wrong_answers(
    client: Any, settings: Any
) -> None:
    gateway = await gateway_headers(settings)
    phone = new_phone()
    await registered(client, phone_number=phone, name="Aline Uwase")
    for _ in range(3):
        assert (await reset_pin(client, gateway, phone, "Claudine")).status_code == 401
    locked = await reset_pin(client, gateway, phone, "aline")  # right, but the number's tries are spent
    assert locked.status_code == 403 and locked.json()["code"] == "reset_locked"

    other = new_phone()
    await registered(client, phone_number=other, name="Aline Uwase")
    assert (await reset_pin(client, gateway, other, " aline ")).status_code == 200


@pytest.mark.parametrize("settings", [{"rate_limit_login_failures": 100}], indirect=True)
async def test_ussd_pin_reset_lifts_the_pin_lock(client: Any, settings: Any) -> None:
    gateway = await gateway_headers(settings)
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN, date_of_birth="2008-01-01")
    for _ in range(settings.pin_max_failures):
        await login(client, phone, pin="9513")
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 403  # locked
    assert (await reset_pin(client, gateway, phone, "2008")).status_code == 200
    assert (await login(client, phone, pin=NEW_PIN)).status_code == 200


# ---- the codes' rules ---------------------------------------------------------------------------


async def test_a_code_works_once(client: Any, sms: SmsStandIn) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    await start(client, phone)
    code = sms.to(e164(phone))[0].code
    assert (await complete(client, phone, code)).status_code == 200
    again = await complete(client, phone, code, new_password="Another-Path-2027")
    assert again.status_code == 401 and again.json()["code"] == "invalid_code"


async def test_a_code_expires(client: Any, settings: Any, sms: SmsStandIn) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    await start(client, phone)
    key = KeySpace(settings.redis_key_prefix, settings.redis_shards).phone(e164(phone), "rcode")
    redis = Redis.from_url(settings.redis_url)
    try:
        ttl = await redis.pttl(key)
        assert 0 < ttl <= settings.recovery_code_minutes * 60_000
        await redis.pexpire(key, 1)  # the ten minutes are over
        await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    assert (await complete(client, phone, sms.to(e164(phone))[0].code)).status_code == 401


@pytest.mark.parametrize("settings", [{"rate_limit_login_failures": 100}], indirect=True)
async def test_a_code_dies_after_five_wrong_tries_and_four_do_not_kill_it(client: Any, settings: Any) -> None:
    gateway = await gateway_headers(settings)
    phones = new_phone(), new_phone()
    for phone in phones:
        await registered(client, phone_number=phone)
    codes = [code_in((await ussd_code(client, gateway, phone)).json()["message"]) for phone in phones]
    for phone, code, tries in zip(phones, codes, (4, 5), strict=True):
        wrong = "000000" if code != "000000" else "111111"
        for _ in range(tries):
            assert (await complete(client, phone, wrong)).status_code == 401
    assert (await complete(client, phones[0], codes[0])).status_code == 200
    assert (await complete(client, phones[1], codes[1])).status_code == 401


async def test_a_new_code_kills_the_previous_one(client: Any, settings: Any, sms: SmsStandIn) -> None:
    gateway = await gateway_headers(settings)
    phone = new_phone()
    await registered(client, phone_number=phone)
    await start(client, phone)
    by_sms = sms.to(e164(phone))[0].code
    by_ussd = code_in((await ussd_code(client, gateway, phone)).json()["message"])
    if by_sms != by_ussd:  # one in a million they are the same digits
        assert (await complete(client, phone, by_sms)).status_code == 401
    assert (await complete(client, phone, by_ussd, new_password="Another-Path-2027")).status_code == 200


@pytest.mark.parametrize("settings", [{"rate_limit_login_failures": 100}], indirect=True)
async def test_concurrent_completions_of_one_code_give_exactly_one_sign_in(client: Any, sms: SmsStandIn) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    await start(client, phone)
    code = sms.to(e164(phone))[0].code
    answers = await asyncio.gather(*(complete(client, phone, code) for _ in range(12)))
    assert sorted(answer.status_code for answer in answers) == [200] + [401] * 11


async def test_a_wrong_code_counts_against_the_clients_sign_in_budget(client: Any, settings: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    limit = settings.rate_limit_login_failures
    statuses = [(await complete(client, phone, f"{n:06d}")).status_code for n in range(limit + 1)]
    assert statuses == [401] * limit + [429]
    other = new_phone()
    assert (await login(client, other, password=STRONG_PASSWORD)).status_code == 429  # sign-in shares it


@pytest.mark.parametrize("settings", [{"rate_limit_login_failures": 100, "account_max_failures": 6}], indirect=True)
async def test_a_wrong_code_counts_against_the_numbers_sign_in_budget(client: Any, settings: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    statuses = [
        (await complete(client, phone, f"{n:06d}")).status_code for n in range(settings.account_max_failures + 1)
    ]
    assert statuses[:-1] == [401] * settings.account_max_failures
    assert statuses[-1] == 429  # the number's password window, shared with sign-in


async def test_bad_input_gets_field_errors(client: Any) -> None:
    response = await client.post("/api/auth/recovery/complete", json={"phone_number": "12", "code": "abc"})
    assert response.status_code == 400
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"phone_number", "code", "new_password"}
    assert (await client.post("/api/auth/recovery/start", json={"phone_number": None})).status_code == 400
    assert (await client.post("/api/auth/recovery/start", content=b"[")).status_code == 400


# ---- the provider ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "rejected"])
async def test_the_provider_failing_answers_503_and_leaves_no_usable_code(
    client: Any, db: Any, sms: SmsStandIn, mode: str
) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    sms.mode = mode
    response = await start(client, phone)
    assert response.status_code == 503 and response.json()["code"] == "sms_failed"
    assert "USSD" in response.json()["message"]
    [received] = sms.to(e164(phone))  # the stand-in saw it; the person may even have got it
    assert (await complete(client, phone, received.code)).status_code == 401
    rows = await audit_rows(db, "sms", 1)
    assert rows[0]["reason"] == "provider_failed"


@pytest.mark.parametrize("settings", [{"africastalking_api_url": "http://127.0.0.1:9"}], indirect=True)
async def test_the_provider_unreachable_answers_503(client: Any) -> None:
    phone = new_phone()
    await registered(client, phone_number=phone)
    response = await start(client, phone)
    assert response.status_code == 503 and response.json()["code"] == "sms_failed"


async def test_numbers_outside_the_allowed_countries_get_no_sms(client: Any, sms: SmsStandIn) -> None:
    response = await start(client, "+254712345678")  # Kenya
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "phone_number"
    assert sms.messages == []


# ---- verifying the number while signed in -----------------------------------------------------


async def test_a_signed_in_account_verifies_its_number_by_sms_or_a_ussd_code(
    client: Any, db: Any, settings: Any, sms: SmsStandIn
) -> None:
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    headers = {"Authorization": f"Bearer {account['access_token']}"}
    assert (await client.post("/api/auth/phone/verify/start")).status_code == 401  # signed in only
    assert (await client.post("/api/auth/phone/verify/start", headers=headers)).status_code == 202
    code = sms.to(e164(phone))[0].code
    wrong = "000000" if code != "000000" else "111111"
    refused = await client.post("/api/auth/phone/verify/confirm", json={"code": wrong}, headers=headers)
    assert refused.status_code == 401
    assert not await db.fetchval("SELECT is_phone_verified FROM users WHERE id = $1", account["user_id"])
    confirmed = await client.post("/api/auth/phone/verify/confirm", json={"code": code}, headers=headers)
    assert confirmed.status_code == 200 and confirmed.json()["is_phone_verified"] is True
    assert await db.fetchval("SELECT is_phone_verified FROM users WHERE id = $1", account["user_id"])
    assert (await refresh(client, account["refresh_token"])).status_code == 200  # no session ended

    other = new_phone()
    second = await registered(client, phone_number=other)
    by_ussd = code_in((await ussd_code(client, await gateway_headers(settings), other)).json()["message"])
    confirmed = await client.post(
        "/api/auth/phone/verify/confirm",
        json={"code": by_ussd},
        headers={"Authorization": f"Bearer {second['access_token']}"},
    )
    assert confirmed.status_code == 200


# ---- what the security team sees ----------------------------------------------------------------


async def test_the_audit_summary_shows_codes_sent_and_the_recovered_per_sent_ratio(
    client: Any, db: Any, sms: SmsStandIn
) -> None:
    recovered, abandoned = new_phone(), new_phone()
    for phone in (recovered, abandoned):
        await registered(client, phone_number=phone)
        assert (await start(client, phone)).status_code == 202
    assert (await complete(client, recovered, sms.to(e164(recovered))[0].code)).status_code == 200
    await audit_rows(db, "sms", 3)
    headers = await staff_headers(client, db, "security")
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = (await client.get(f"/api/audit/summary?since={since}", headers=headers)).json()
    by_channel = {item["channel"]: item for item in summary["recovery"]}
    assert by_channel["sms"] == {"channel": "sms", "codes_sent": 2, "recovered": 1, "recovered_per_sent": 0.5}
    assert by_channel["ussd"]["codes_sent"] == 0 and by_channel["ussd"]["recovered_per_sent"] is None
