import bcrypt
import pytest

from tests.helpers import GOOD_PIN, STRONG_PASSWORD, bearer, e164, new_phone, registered


async def login(client, headers=None, **body):
    return await client.post("/api/auth/login", json=body, headers=headers or {})


@pytest.mark.parametrize("typed", ["0788777001", "+250 788 777 001", "+250788777001", "250788777001"])
async def test_password_login_with_any_form_of_the_number(client, typed):
    await registered(client, phone_number="0788777001")
    response = await login(client, phone_number=typed, password=STRONG_PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["auth_method"] == "password"
    assert body["user"]["phone_number"] == "+250788777001"
    assert body["access_token"] and body["refresh_token"] and body["user_id"] and body["user_type"]


async def test_pin_login(client):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    response = await login(client, phone_number=phone, pin=GOOD_PIN)
    assert response.status_code == 200, response.text
    assert response.json()["auth_method"] == "pin"


async def test_tokens_from_login_open_the_profile(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    tokens = (await login(client, phone_number=phone, password=STRONG_PASSWORD)).json()
    profile = await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))
    assert profile.status_code == 200
    assert profile.json()["phone_number"] == e164(phone)


_clients = iter(range(1, 250))


async def _failure(client, **body):
    # Each from a client of its own (through a trusted proxy), so even the RateLimit headers must match.
    response = await login(client, headers={"X-Forwarded-For": f"198.51.100.{next(_clients)}"}, **body)
    assert response.status_code == 401, response.text
    return response


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.1/32"]}], indirect=True)
async def test_every_credential_failure_looks_the_same(client, db):
    with_pin = new_phone()
    without_pin = new_phone()
    inactive = new_phone()
    await registered(client, phone_number=with_pin, pin=GOOD_PIN)
    await registered(client, phone_number=without_pin)
    await registered(client, phone_number=inactive)
    await db.execute("UPDATE users SET is_active = false WHERE phone_number = $1", e164(inactive))

    failures = [
        await _failure(client, phone_number=new_phone(), password=STRONG_PASSWORD),  # unknown phone
        await _failure(client, phone_number=with_pin, password="Wrong-Password-77"),  # wrong password
        await _failure(client, phone_number=with_pin, pin="9513"),  # wrong PIN
        await _failure(client, phone_number=without_pin, pin=GOOD_PIN),  # PIN not enabled
        await _failure(client, phone_number=inactive, password=STRONG_PASSWORD),  # inactive, right password
        await _failure(client, phone_number=new_phone(), pin=GOOD_PIN),  # unknown phone, PIN
    ]
    bodies = {response.text for response in failures}
    assert len(bodies) == 1
    assert failures[0].json()["code"] == "invalid_credentials"
    header_sets = {
        tuple(sorted((k, v) for k, v in r.headers.items() if k not in {"date", "content-length"})) for r in failures
    }
    assert len(header_sets) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"phone_number": "0788123456"},
        {"phone_number": "0788123456", "password": "x-Y-z-12345", "pin": "4827"},
        {"password": STRONG_PASSWORD},
        {"phone_number": "hello", "password": STRONG_PASSWORD},
    ],
)
async def test_malformed_login_is_a_400_with_fields(client, body):
    response = await login(client, **body)
    assert response.status_code == 400
    assert response.json()["errors"]


async def test_flask_era_bcrypt_password_logs_in_and_is_rehashed(client, db):
    phone = "+250788900100"
    legacy = bcrypt.hashpw(b"Old-Flask-Password-1", bcrypt.gensalt(rounds=4)).decode()
    await db.execute(
        "INSERT INTO users (name, phone_number, password_hash, user_type, created_at, updated_at) "
        "VALUES ('Legacy User', $1, $2, 'parent', now(), now())",
        phone,
        legacy,
    )
    response = await login(client, phone_number="0788900100", password="Old-Flask-Password-1")
    assert response.status_code == 200, response.text
    stored = await db.fetchval("SELECT password_hash FROM users WHERE phone_number = $1", phone)
    assert stored.startswith("$argon2id$")
    again = await login(client, phone_number=phone, password="Old-Flask-Password-1")
    assert again.status_code == 200
    wrong = await login(client, phone_number=phone, password="Not-The-Password-1")
    assert wrong.status_code == 401


async def test_flask_era_bcrypt_pin_logs_in_and_is_rehashed_with_pepper(client, db):
    phone = "+250788900101"
    await db.execute(
        "INSERT INTO users (name, phone_number, password_hash, pin_hash, enable_pin_auth, user_type, "
        "created_at, updated_at) VALUES ('Legacy Pin', $1, $2, $3, true, 'adolescent', now(), now())",
        phone,
        bcrypt.hashpw(b"Some-Password-99", bcrypt.gensalt(rounds=4)).decode(),
        bcrypt.hashpw(b"4827", bcrypt.gensalt(rounds=4)).decode(),
    )
    assert (await login(client, phone_number=phone, pin="4827")).status_code == 200
    stored = await db.fetchval("SELECT pin_hash FROM users WHERE phone_number = $1", phone)
    assert stored.startswith("$argon2id$")
    assert (await login(client, phone_number=phone, pin="4827")).status_code == 200
    assert (await login(client, phone_number=phone, pin="4828")).status_code == 401


async def test_login_updates_last_activity(client, db):
    phone = new_phone()
    await registered(client, phone_number=phone)
    await db.execute("UPDATE users SET last_activity = NULL WHERE phone_number = $1", e164(phone))
    assert (await login(client, phone_number=phone, password=STRONG_PASSWORD)).status_code == 200
    assert await db.fetchval("SELECT last_activity FROM users WHERE phone_number = $1", e164(phone)) is not None
