import pytest

from tests.helpers import GOOD_PIN, STRONG_PASSWORD, e164, new_phone, register


async def test_register_returns_tokens_and_user_as_clients_read_them(client, db):
    phone = new_phone()
    response = await register(client, name="Aline Uwase", phone_number=phone)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["access_token"] and body["refresh_token"]
    assert body["user"]["first_name"] == "Aline"
    assert body["user"]["last_name"] == "Uwase"
    assert body["user"]["user_type"] == "adolescent"
    assert body["user"]["phone_number"] == e164(phone) == body["user"]["phone"]
    assert body["pin_enabled"] is False
    assert isinstance(body["message"], str)
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1", body["user_id"])
    assert row["phone_number"] == e164(phone)
    assert row["password_hash"].startswith("$argon2id$")
    assert STRONG_PASSWORD not in row["password_hash"]


async def test_register_with_pin_stores_a_peppered_hash(client, db):
    body = (await register(client, pin=GOOD_PIN, user_type="parent")).json()
    assert body["pin_enabled"] is True and body["user_type"] == "parent"
    row = await db.fetchrow("SELECT pin_hash, enable_pin_auth FROM users WHERE id = $1", body["user_id"])
    assert row["enable_pin_auth"] and row["pin_hash"].startswith("$argon2id$")


@pytest.mark.parametrize("typed", ["0788 555 111", "+250788555111", "+250 788 555 111", "250788555111"])
async def test_phone_number_as_typed_is_stored_in_e164(client, typed):
    body = (await register(client, phone_number=typed)).json()
    assert body["user"]["phone_number"] == "+250788555111"


async def test_same_number_in_another_form_is_a_conflict(client):
    await register(client, phone_number="0788555222")
    response = await register(client, phone_number="+250 788 555 222")
    assert response.status_code == 409
    assert response.json()["code"] == "phone_number_taken"


async def test_email_is_unique_case_insensitively(client):
    assert (await register(client, email="aline@example.org")).status_code == 201
    response = await register(client, email="ALINE@Example.org")
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"


async def test_empty_email_is_treated_as_absent(client):
    assert (await register(client, email="")).status_code == 201
    assert (await register(client, email="")).status_code == 201


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"password": "short1!"}, "password"),
        ({"password": "password123"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"phone_number": "0788123456", "password": "my0788123456pw"}, "password"),
        ({"name": "Clarisse Mukamana", "password": "clarisse2024!"}, "password"),
        ({"user_type": "admin"}, "user_type"),
        ({"pin": "1234"}, "pin"),
        ({"pin": "7777"}, "pin"),
        ({"pin": "2580"}, "pin"),
        ({"pin": "12345"}, "pin"),
        ({"email": "not-an-email"}, "email"),
        ({"date_of_birth": "2999-01-01"}, "date_of_birth"),
        ({"date_of_birth": "yesterday"}, "date_of_birth"),
        ({"phone_number": "12"}, "phone_number"),
        ({"name": "   "}, "name"),
    ],
)
async def test_invalid_fields_are_named_in_the_error(client, fields, field):
    response = await register(client, **fields)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in [error["field"] for error in body["errors"]]
    assert body["message"]


async def test_every_problem_is_reported_at_once(client):
    response = await client.post("/api/auth/register", json={"password": "123"})
    fields = {error["field"] for error in response.json()["errors"]}
    assert {"name", "phone_number", "password"} <= fields


async def test_stale_authorization_header_is_ignored(client):
    response = await register(client, name="Ange Keza", **{})
    assert response.status_code == 201
    again = await client.post(
        "/api/auth/register",
        json={"name": "Ange Keza", "phone_number": new_phone(), "password": STRONG_PASSWORD},
        headers={"Authorization": "Bearer not-a-real-token"},
    )
    assert again.status_code == 201
