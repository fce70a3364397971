"""The USSD gateway's endpoints: a service credential, per-number limits shared with the app, audit."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import bcrypt
import pytest

from tests.asgi import in_loop_client
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, bearer, e164, new_phone, registered
from tests.platform.support import arun_cli, new_credential

WRONG_PIN = "9513"
NEW_PIN = "3816"
_sessions = itertools.count(1)


def new_session() -> str:
    return f"ATUid_{next(_sessions):08d}"


@pytest.fixture
def gateway_name() -> str:
    return f"ussd-gateway-{uuid.uuid4().hex[:8]}"  # credentials outlive a test: a name of its own


@pytest.fixture
async def gateway(settings: Any, gateway_name: str) -> dict[str, str]:
    return bearer(await new_credential(settings, gateway_name, "ussd"))


async def verify(client: Any, headers: dict[str, str], phone: str, pin: str, session: str | None = None) -> Any:
    body = {"phone_number": phone, "pin": pin, "session_id": session or new_session()}
    return await client.post("/api/ussd/verify-pin", json=body, headers=headers)


async def ussd_register(client: Any, headers: dict[str, str], phone: str, pin: str = GOOD_PIN, **extra: Any) -> Any:
    body = {"phone_number": phone, "name": "Claudine Mukamana", "user_type": "adolescent", "pin": pin}
    body.update({"session_id": new_session(), **extra})
    return await client.post("/api/ussd/register", json=body, headers=headers)


async def change_pin(client: Any, headers: dict[str, str], phone: str, current: str, new: str) -> Any:
    body = {"phone_number": phone, "current_pin": current, "new_pin": new, "session_id": new_session()}
    return await client.post("/api/ussd/change-pin", json=body, headers=headers)


async def app_login(client: Any, phone: str, **secret: str) -> Any:
    return await client.post("/api/auth/login", json={"phone_number": phone, **secret})


def screen(response: Any) -> str:
    """The message the menu shows: a short plain sentence."""
    message: str = response.json()["message"]
    assert 0 < len(message) <= 160 and "<" not in message and ">" not in message, message
    return message


async def ussd_rows(db: Any, count: int) -> list[Any]:
    """The USSD audit rows once ``count`` have been written (the writer runs in the app)."""
    rows: list[Any] = []
    for _ in range(400):
        rows = await db.fetch("SELECT * FROM login_attempts WHERE channel = 'ussd' ORDER BY id")
        if len(rows) >= count:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything written twice would show up by now
    return list(await db.fetch("SELECT * FROM login_attempts WHERE channel = 'ussd' ORDER BY id"))


# ---- the gateway's credential ------------------------------------------------------------------


async def test_gateway_credential_missing_wrong_revoked_or_without_the_scope_is_refused(client, settings):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    missing = await client.post("/api/ussd/verify-pin", json={"phone_number": phone, "pin": GOOD_PIN})
    assert missing.status_code == 401 and missing.json()["code"] == "invalid_service_credential"
    wrong = await verify(client, bearer("les_" + "A" * 43), phone, GOOD_PIN)
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_service_credential"

    old = f"old-gateway-{uuid.uuid4().hex[:8]}"
    revoked = await new_credential(settings, old, "ussd")
    assert (await verify(client, bearer(revoked), phone, GOOD_PIN)).status_code == 200
    assert (await arun_cli(settings, "services", "revoke", old)).exit_code == 0
    assert (await verify(client, bearer(revoked), phone, GOOD_PIN)).status_code == 401

    reader = await new_credential(settings, f"reader-{uuid.uuid4().hex[:8]}", "users:read")
    no_scope = await verify(client, bearer(reader), phone, GOOD_PIN)
    assert no_scope.status_code == 403 and no_scope.json()["code"] == "insufficient_scope"
    user = await registered(client)
    as_user = await verify(client, bearer(user["access_token"]), phone, GOOD_PIN)
    assert as_user.status_code == 403 and as_user.json()["code"] == "service_credential_required"
    for path in ("/api/ussd/register", "/api/ussd/change-pin"):
        assert (await client.post(path, json={}, headers=bearer(reader))).status_code == 403


# ---- limits -------------------------------------------------------------------------------------


@pytest.mark.slow
# Not under test: the audit writer's Postgres batches, which would only compete for the CPU and the pool.
@pytest.mark.parametrize("settings", [{"audit_writer_enabled": False}], indirect=True)
async def test_a_thousand_numbers_with_one_wrong_pin_each_through_one_address_are_all_401(app, gateway):
    """Through the login endpoint these would share the gateway's address: five wrong PINs, then 429.

    Sent from the test's own event loop (tests/asgi.py), 50 at a time: through the test client they
    went one at a time through its portal thread, about a minute.
    """
    phones = [f"+25073{n:07d}" for n in range(1000)]
    statuses: list[int] = []
    async with in_loop_client(app) as client:
        for start in range(0, len(phones), 50):
            batch = phones[start : start + 50]
            answers = await asyncio.gather(*(verify(client, gateway, phone, WRONG_PIN) for phone in batch))
            statuses += [answer.status_code for answer in answers]
    assert statuses.count(401) == 1000, {status: statuses.count(status) for status in set(statuses)}


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.0/8"]}], indirect=True)
async def test_six_wrong_pins_lock_the_number_in_the_app_too_and_a_password_sign_in_unlocks_it(client, gateway):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    first, second = new_session(), new_session()  # a session allows 3: the lock is the number's
    answers = [await verify(client, gateway, phone, WRONG_PIN, first) for _ in range(3)]
    answers += [await verify(client, gateway, phone, WRONG_PIN, second) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [401] * 5 + [403]
    assert answers[-1].json()["code"] == "pin_locked"
    screen(answers[-1])
    assert (await verify(client, gateway, phone, GOOD_PIN)).json()["code"] == "pin_locked"  # even the right PIN

    in_app = await app_login(client, phone, pin=GOOD_PIN)
    assert in_app.status_code == 403 and in_app.json()["code"] == "pin_locked"
    assert (await app_login(client, phone, password=STRONG_PASSWORD)).status_code == 200
    unlocked = await verify(client, gateway, phone, GOOD_PIN)
    assert unlocked.status_code == 200, unlocked.text


async def test_a_sessions_fourth_wrong_pin_is_refused(client, gateway):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    session = new_session()
    answers = [await verify(client, gateway, phone, WRONG_PIN, session) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [401, 401, 401]
    fourth = await verify(client, gateway, phone, GOOD_PIN, session)  # even the right PIN
    assert fourth.status_code == 403 and fourth.json()["code"] == "session_locked"
    screen(fourth)
    assert (await verify(client, gateway, phone, GOOD_PIN)).status_code == 200  # a new dial, 3 < PIN_MAX_FAILURES


async def test_two_hundred_concurrent_wrong_pins_on_one_number_verify_at_most_the_pin_budget(
    client, gateway, settings, db
):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    answers = await asyncio.gather(*(verify(client, gateway, phone, WRONG_PIN) for _ in range(200)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(401) == settings.pin_max_failures
    assert statuses.count(403) == 200 - settings.pin_max_failures
    rows = await ussd_rows(db, 200)
    verified = [row for row in rows if row["reason"] == "invalid_credentials"]
    assert len(rows) == 200 and len(verified) == settings.pin_max_failures


@pytest.mark.parametrize("settings", [{"ussd_max_failures_per_minute": 3}], indirect=True)
async def test_the_gateway_credential_has_a_failure_budget_across_numbers(client, gateway, settings):
    answers = [await verify(client, gateway, new_phone(), WRONG_PIN) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    refused = answers[-1]
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    screen(refused)
    other = bearer(await new_credential(settings, f"second-gateway-{uuid.uuid4().hex[:8]}", "ussd"))
    assert (await verify(client, other, new_phone(), WRONG_PIN)).status_code == 401  # a budget per credential


@pytest.mark.parametrize("settings", [{"ussd_registrations_per_minute": 5}], indirect=True)
async def test_concurrent_registrations_through_one_credential_exactly_the_budget_succeed(
    client, gateway, settings, db
):
    """The attack: 24 accounts in 2 s through one credential, each phone-verified with the caller's PIN."""
    phones = [new_phone() for _ in range(24)]
    answers = await asyncio.gather(*(ussd_register(client, gateway, phone) for phone in phones))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(201) == 5 and statuses.count(429) == 19, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json()["code"] == "rate_limited" and 1 <= int(refused.headers["Retry-After"]) <= 60
    screen(refused)
    stored = await db.fetchval(
        "SELECT count(*) FROM users WHERE phone_number = ANY($1::text[])", [e164(p) for p in phones]
    )
    assert stored == 5
    rows = await ussd_rows(db, 24)
    assert sorted(row["reason"] for row in rows) == ["rate_limited"] * 19 + ["registered"] * 5
    other = bearer(await new_credential(settings, f"second-gateway-{uuid.uuid4().hex[:8]}", "ussd"))
    assert (await ussd_register(client, other, new_phone())).status_code == 201  # a budget per credential


@pytest.mark.parametrize("settings", [{"ussd_registrations_per_minute": 3}], indirect=True)
async def test_the_409_counts_so_asking_which_numbers_have_accounts_is_limited(client, gateway):
    taken = [new_phone() for _ in range(5)]
    for phone in taken:
        await registered(client, phone_number=phone)
    answers = [await ussd_register(client, gateway, phone) for phone in taken]
    assert [answer.status_code for answer in answers] == [409, 409, 409, 429, 429]


@pytest.mark.parametrize("settings", [{"ussd_registrations_per_number_per_day": 3}], indirect=True)
async def test_one_number_has_its_own_registration_budget_under_concurrency(client, gateway, db):
    phone = new_phone()
    answers = await asyncio.gather(*(ussd_register(client, gateway, phone) for _ in range(10)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] + [409] * 2 + [429] * 7, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert int(refused.headers["Retry-After"]) > 3600 and "number" in screen(refused)
    assert await db.fetchval("SELECT count(*) FROM users WHERE phone_number = $1", e164(phone)) == 1
    assert (await ussd_register(client, gateway, new_phone())).status_code == 201  # other numbers go on


async def test_a_name_registration_refuses_is_refused_over_ussd_too(client, gateway):
    for name in ("Claudine\u202eanidualC", "Clau\u200bdine", "Clau\x07dine"):
        refused = await ussd_register(client, gateway, new_phone(), name=name)
        assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "name", name
        screen(refused)


# ---- accounts and PINs -------------------------------------------------------------------------


async def test_register_verify_change_pin_and_the_apps_sessions_end(client, gateway, db):
    phone = new_phone()
    created = await ussd_register(client, gateway, phone)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["first_name"] == "Claudine" and body["user_type"] == "adolescent" and body["enable_pin_auth"]
    screen(created)
    row = await db.fetchrow("SELECT is_phone_verified, enable_pin_auth FROM users WHERE id = $1", body["user_id"])
    assert row["is_phone_verified"] and row["enable_pin_auth"]

    verified = await verify(client, gateway, phone, GOOD_PIN)
    assert verified.status_code == 200 and verified.json()["user_id"] == body["user_id"]
    app_session = await app_login(client, phone, pin=GOOD_PIN)
    assert app_session.status_code == 200
    refresh_token = app_session.json()["refresh_token"]

    changed = await change_pin(client, gateway, phone, GOOD_PIN, NEW_PIN)
    assert changed.status_code == 200, changed.text
    screen(changed)
    assert (await verify(client, gateway, phone, GOOD_PIN)).status_code == 401
    assert (await verify(client, gateway, phone, NEW_PIN)).status_code == 200
    ended = await client.post("/api/auth/refresh", headers=bearer(refresh_token))
    assert ended.status_code == 401


async def test_a_ussd_account_has_no_password_and_a_password_sign_in_fails_like_a_wrong_one(client, gateway):
    phone, other = new_phone(), new_phone()
    assert (await ussd_register(client, gateway, phone)).status_code == 201
    await registered(client, phone_number=other)
    for guess in ("!no-password", STRONG_PASSWORD):  # 4 failures: within this address's budget
        no_password = await app_login(client, phone, password=guess)
        wrong = await app_login(client, other, password="Wrong-Password-77")
        assert no_password.status_code == wrong.status_code == 401
        assert no_password.json() == wrong.json()


async def test_a_taken_number_is_409_with_a_message_the_menu_can_show(client, gateway):
    phone = new_phone()
    await registered(client, phone_number=phone)
    taken = await ussd_register(client, gateway, phone)
    assert taken.status_code == 409 and taken.json()["code"] == "phone_number_taken"
    screen(taken)


async def test_pin_rules_are_the_usual_ones(client, gateway):
    for weak in ("1234", "1111", "2580", "12345", "12a4"):
        refused = await ussd_register(client, gateway, new_phone(), pin=weak)
        assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "pin", weak
        screen(refused)


async def test_a_flask_era_pin_verifies_and_is_rehashed(client, gateway, db):
    phone = e164(new_phone())
    legacy = bcrypt.hashpw(GOOD_PIN.encode(), bcrypt.gensalt(rounds=4)).decode()
    user_id = await db.fetchval(
        """INSERT INTO users (name, phone_number, password_hash, pin_hash, enable_pin_auth, user_type,
                              created_at, updated_at)
           VALUES ('Jeanne Uwera', $1, $2, $2, true, 'parent', now(), now()) RETURNING id""",
        phone,
        legacy,
    )
    answer = await verify(client, gateway, phone, GOOD_PIN)
    assert answer.status_code == 200 and answer.json()["user_id"] == user_id
    stored = await db.fetchval("SELECT pin_hash FROM users WHERE id = $1", user_id)
    assert stored.startswith("$argon2id$")
    assert (await verify(client, gateway, phone, GOOD_PIN)).status_code == 200
    assert (await verify(client, gateway, phone, WRONG_PIN)).status_code == 401


# ---- audit --------------------------------------------------------------------------------------


async def test_every_call_leaves_exactly_one_audit_row_with_its_channel_session_and_gateway(
    client, gateway, gateway_name, db
):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    sessions: dict[str, tuple[int, str]] = {}

    async def call(path: str, status: int, reason: str, **body: Any) -> None:
        session = new_session()
        answer = await client.post(path, json={**body, "session_id": session}, headers=gateway)
        assert answer.status_code == status, answer.text
        screen(answer)
        sessions[session] = (status, reason)

    await call("/api/ussd/verify-pin", 200, "ok", phone_number=phone, pin=GOOD_PIN)
    await call("/api/ussd/verify-pin", 401, "invalid_credentials", phone_number=phone, pin=WRONG_PIN)
    await call("/api/ussd/verify-pin", 401, "unknown_account", phone_number=new_phone(), pin=GOOD_PIN)
    await call("/api/ussd/verify-pin", 400, "invalid_request", phone_number=phone)
    fresh = new_phone()
    registration = {"name": "Ange Keza", "user_type": "parent", "pin": GOOD_PIN}
    await call("/api/ussd/register", 201, "registered", phone_number=fresh, **registration)
    await call("/api/ussd/register", 409, "phone_number_taken", phone_number=fresh, **registration)
    await call("/api/ussd/change-pin", 200, "pin_changed", phone_number=phone, current_pin=GOOD_PIN, new_pin=NEW_PIN)
    malformed = await client.post(
        "/api/ussd/verify-pin", content=b'{"phone_number": ', headers={**gateway, "content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["code"] == "malformed_json"

    rows = await ussd_rows(db, len(sessions) + 1)
    assert len(rows) == len(sessions) + 1
    by_session = {row["session_id"]: row for row in rows}
    assert set(by_session) == {*sessions, None}  # the malformed body named no session
    for session, (_, reason) in sessions.items():
        row = by_session[session]
        assert row["reason"] == reason and row["channel"] == "ussd" and row["service_name"] == gateway_name
        assert row["auth_method"] == "pin" and str(row["ip_address"]) == "127.0.0.1"
    assert by_session[None]["reason"] == "invalid_request"
    app = await app_login(client, phone, pin=NEW_PIN)
    assert app.status_code == 200
    for _ in range(100):
        channels = await db.fetch("SELECT channel FROM login_attempts WHERE auth_method = 'pin' AND channel = 'http'")
        if channels:
            break
        await asyncio.sleep(0.05)
    assert len(channels) == 1  # the login endpoint's attempts are channel http


async def test_every_call_refused_for_its_credential_leaves_one_audit_row_with_what_is_known(client, settings, db):
    phone = new_phone()
    body = {"phone_number": phone, "pin": GOOD_PIN, "session_id": new_session()}
    revoked_name, reader_name = f"old-gateway-{uuid.uuid4().hex[:8]}", f"reader-{uuid.uuid4().hex[:8]}"
    revoked = await new_credential(settings, revoked_name, "ussd")
    assert (await arun_cli(settings, "services", "revoke", revoked_name)).exit_code == 0
    reader = await new_credential(settings, reader_name, "users:read")
    user = await registered(client)
    calls = {
        "missing": ({}, None),
        "unknown": (bearer("les_" + "A" * 43), None),
        "garbage": (bearer("not-a-token"), None),
        "revoked": (bearer(revoked), revoked_name),
        "no scope": (bearer(reader), reader_name),
        "user token": (bearer(user["access_token"]), None),
    }
    for what, (headers, _) in calls.items():
        answer = await client.post("/api/ussd/register", json=body, headers={**headers, "user-agent": what})
        assert answer.status_code in (401, 403), (what, answer.text)

    rows = await ussd_rows(db, len(calls))
    assert len(rows) == len(calls)
    by_agent = {row["user_agent"]: row for row in rows}
    for what, (_, name) in calls.items():
        row = by_agent[what]
        assert row["reason"] == "bad_credential" and not row["success"] and row["service_name"] == name, what
        assert str(row["ip_address"]) == "127.0.0.1" and row["phone_number"] == ""
    assert by_agent["user token"]["user_id"] == user["user_id"]
    assert await db.fetchval("SELECT count(*) FROM users WHERE phone_number = $1", e164(phone)) == 0


# ---- hostile input ------------------------------------------------------------------------------


async def test_hostile_bodies_are_clear_json_errors_never_500(client, gateway, settings):
    json_type = {**gateway, "content-type": "application/json"}
    bodies = {
        "nested": ("[" * 8000 + "]" * 8000).encode(),
        "not an object": b'"0788123456"',
        "wrong types": b'{"phone_number": ["0788123456"], "pin": {"a": 1}, "session_id": true}',
        "nul": b'{"phone_number": "0788\\u0000123456", "pin": "4827", "session_id": "a\\u0000b"}',
        "oversized": b'{"pin": "' + b"1" * settings.max_body_bytes + b'"}',
    }
    for path in ("/api/ussd/verify-pin", "/api/ussd/register", "/api/ussd/change-pin"):
        for shape, body in bodies.items():
            answer = await client.post(path, content=body, headers=json_type)
            assert answer.status_code in (400, 413), (path, shape, answer.text)
            assert answer.json()["code"] and screen(answer)
