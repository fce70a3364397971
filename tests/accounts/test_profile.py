import pytest

from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, new_phone, registered

PROFILE_FIELDS = {
    "name", "first_name", "last_name", "phone_number", "phone", "email", "user_type", "enable_pin_auth",
    "date_of_birth", "personal_cycle_length", "personal_period_length", "has_provided_cycle_info",
    "session_timeout_minutes", "last_activity", "created_at",
}  # fmt: skip

PATHS = ["/api/auth/profile", "/api/settings/account"]


@pytest.fixture
async def account(client):
    phone = new_phone()
    body = await registered(client, phone_number=phone, name="Aline Uwase")
    return {"phone": phone, "headers": bearer(body["access_token"]), **body}


@pytest.mark.parametrize("path", PATHS)
async def test_profile_is_the_whole_user_object(client, account, path):
    response = await client.get(path, headers=account["headers"])
    assert response.status_code == 200
    body = response.json()
    assert body.keys() >= PROFILE_FIELDS
    assert body["user"].keys() >= PROFILE_FIELDS
    assert body["first_name"] == "Aline" and body["user"]["first_name"] == "Aline"
    assert body["phone"] == body["phone_number"]


@pytest.mark.parametrize("path", PATHS)
async def test_profile_needs_a_token(client, path):
    response = await client.get(path)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


async def test_settings_page_update(client, account):
    response = await client.put(
        "/api/settings/account",
        headers=account["headers"],
        json={
            "first_name": "Aline",
            "last_name": "Mukamana",
            "email": "aline@example.org",
            "phone_number": account["phone"],
            "session_timeout_minutes": 45,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]
    assert body["user"]["name"] == "Aline Mukamana"
    assert body["user"]["email"] == "aline@example.org"
    assert body["user"]["session_timeout_minutes"] == 45
    again = (await client.get("/api/settings/account", headers=account["headers"])).json()
    assert again["user"]["last_name"] == "Mukamana"


async def test_cycle_fields(client, account):
    response = await client.put(
        "/api/auth/profile",
        headers=account["headers"],
        json={"personal_cycle_length": 28, "personal_period_length": 5},
    )
    assert response.status_code == 200
    user = response.json()["user"]
    assert (user["personal_cycle_length"], user["personal_period_length"], user["has_provided_cycle_info"]) == (
        28,
        5,
        True,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"personal_cycle_length": 14}, "personal_cycle_length"),
        ({"personal_cycle_length": 61}, "personal_cycle_length"),
        ({"personal_period_length": 0}, "personal_period_length"),
        ({"personal_period_length": 16}, "personal_period_length"),
        ({"session_timeout_minutes": 0}, "session_timeout_minutes"),
        ({"session_timeout_minutes": 61}, "session_timeout_minutes"),
        ({"email": "nope"}, "email"),
        ({"date_of_birth": "2999-12-31"}, "date_of_birth"),
        ({"phone": "123"}, "phone"),
    ],
)
async def test_out_of_range_values_are_refused(client, account, fields, field):
    response = await client.put("/api/auth/profile", headers=account["headers"], json=fields)
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_older_client_sends_phone(client, account):
    new = new_phone()
    response = await client.put("/api/auth/profile", headers=account["headers"], json={"phone": new})
    assert response.status_code == 200
    login = await client.post("/api/auth/login", json={"phone_number": new, "password": STRONG_PASSWORD})
    assert login.status_code == 200


async def test_phone_number_of_another_account_is_a_conflict(client, account):
    other = new_phone()
    await registered(client, phone_number=other)
    response = await client.put("/api/auth/profile", headers=account["headers"], json={"phone_number": other})
    assert response.status_code == 409


async def test_a_wrong_current_password_is_refused(client, account):
    """A recent sign-in needs no current_password (test_web_client), but a wrong one given is refused."""
    wrong = await client.put(
        "/api/auth/profile",
        headers=account["headers"],
        json={"new_password": OTHER_PASSWORD, "current_password": "Not-My-Password-1"},
    )
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["field"] == "current_password"
    login = await client.post("/api/auth/login", json={"phone_number": account["phone"], "password": OTHER_PASSWORD})
    assert login.status_code == 401


async def test_password_change_ends_the_other_sessions_and_keeps_this_one(client, account):
    other_device = await client.post(
        "/api/auth/login", json={"phone_number": account["phone"], "password": STRONG_PASSWORD}
    )
    other_tokens = other_device.json()
    response = await client.put(
        "/api/settings/account",
        headers=account["headers"],
        json={"current_password": STRONG_PASSWORD, "new_password": OTHER_PASSWORD},
    )
    assert response.status_code == 200, response.text
    assert "signed out on your other devices" in response.json()["message"]
    assert (await client.get("/api/auth/profile", headers=bearer(other_tokens["access_token"]))).status_code == 401
    assert (await client.post("/api/auth/refresh", headers=bearer(other_tokens["refresh_token"]))).status_code == 401
    assert (await client.get("/api/auth/profile", headers=account["headers"])).status_code == 200
    assert (await client.post("/api/auth/refresh", headers=bearer(account["refresh_token"]))).status_code == 200
    old_login = await client.post(
        "/api/auth/login", json={"phone_number": account["phone"], "password": STRONG_PASSWORD}
    )
    assert old_login.status_code == 401
    new_login = await client.post(
        "/api/auth/login", json={"phone_number": account["phone"], "password": OTHER_PASSWORD}
    )
    assert new_login.status_code == 200


async def test_setting_a_pin_enables_pin_login(client, account):
    response = await client.put(
        "/api/settings/account",
        headers=account["headers"],
        json={"new_pin": GOOD_PIN, "current_password": STRONG_PASSWORD, "enable_pin_auth": True},
    )
    assert response.status_code == 200, response.text
    assert response.json()["user"]["enable_pin_auth"] is True
    login = await client.post("/api/auth/login", json={"phone_number": account["phone"], "pin": GOOD_PIN})
    assert login.status_code == 200


async def test_weak_pin_is_refused(client, account):
    response = await client.put(
        "/api/settings/account",
        headers=account["headers"],
        json={"new_pin": "1111", "current_password": STRONG_PASSWORD},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "new_pin"


async def test_enabling_pin_without_a_pin_is_refused(client, account):
    response = await client.put("/api/settings/account", headers=account["headers"], json={"enable_pin_auth": True})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "enable_pin_auth"


async def test_disabling_pin_stops_pin_login(client):
    phone = new_phone()
    body = await registered(client, phone_number=phone, pin=GOOD_PIN)
    response = await client.put(
        "/api/settings/account", headers=bearer(body["access_token"]), json={"enable_pin_auth": False}
    )
    assert response.status_code == 200
    login = await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})
    assert login.status_code == 401


@pytest.mark.parametrize("path", PATHS)
async def test_profile_refuses_the_preferences_the_privacy_page_refuses(client, db, account, path):
    """Issue 21, finding 11: the profile route stored unknown keys and any value; one check serves both."""
    refused = {"sms": True, "x-tracker": True, "email": 2**80, "cycle_reminders": "yes"}
    for route, method in ((path, client.put), ("/api/settings/privacy", client.put)):
        response = await method(route, headers=account["headers"], json={"notification_preferences": refused})
        assert response.status_code == 400, response.text
        fields = {e["field"] for e in response.json()["errors"]}
        assert fields == {
            "notification_preferences.x-tracker",
            "notification_preferences.email",
            "notification_preferences.cycle_reminders",
        }
    stored = await db.fetchval("SELECT notification_preferences FROM users WHERE id = $1", account["user_id"])
    assert stored is None  # nothing of either refused request was kept

    saved = await client.put(path, headers=account["headers"], json={"notification_preferences": {"sms": True}})
    assert saved.status_code == 200, saved.text
    privacy = (await client.get("/api/settings/privacy", headers=account["headers"])).json()["privacy"]
    assert privacy["notification_preferences"]["sms"] is True
    assert privacy["notification_preferences"]["email"] is True  # the other switches keep their values
