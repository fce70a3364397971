"""The web client in the field, call by call as clients/web-client.md records it: cross-origin, credentialed."""

import asyncio
import datetime
import re
import time

import pytest

from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, e164, new_phone, register, registered

FIELD_ORIGIN = "https://ladys-essence-git-main-team.vercel.app"
FIELD_ORIGINS = {
    "cors_allow_origins": ["https://*.vercel.app", r"^https?://localhost(:\d+)?$", "capacitor://localhost"]
}
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"}


def cors_of(response):
    return {
        name.lower(): value for name, value in response.headers.items() if name.lower().startswith("access-control-")
    }


def varies_on_origin(response):
    return "origin" in [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


@pytest.mark.parametrize("settings", [FIELD_ORIGINS], indirect=True)
@pytest.mark.parametrize("origin", [FIELD_ORIGIN, "https://localhost:41237", "capacitor://localhost"])
async def test_preflight_and_credentialed_calls_from_an_allowed_origin(client, origin):
    phone = new_phone()
    preflight = await client.options("/api/auth/register", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.status_code == 204
    cors = cors_of(preflight)
    assert cors["access-control-allow-origin"] == origin
    assert cors["access-control-allow-credentials"] == "true"
    assert {"POST", "PUT", "GET", "OPTIONS"} <= {m.strip() for m in cors["access-control-allow-methods"].split(",")}
    allowed_headers = {h.strip().lower() for h in cors["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "x-requested-with"} <= allowed_headers
    assert cors["access-control-max-age"] == "86400"
    assert varies_on_origin(preflight)

    registration = await client.post(
        "/api/auth/register",
        headers={"Origin": origin},
        json={"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "adolescent"},
    )
    assert registration.status_code == 201
    assert cors_of(registration)["access-control-allow-origin"] == origin
    assert cors_of(registration)["access-control-allow-credentials"] == "true"
    assert varies_on_origin(registration)
    # The login route's preflight and its answers (the gate's too) follow the same policy.
    login_preflight = await client.options("/api/auth/login", headers={"Origin": origin, **PREFLIGHT})
    assert cors_of(login_preflight) == cors
    login = await client.post(
        "/api/auth/login",
        headers={"Origin": origin, **bearer("stale-token")},
        json={"phone_number": phone, "password": STRONG_PASSWORD},
    )
    assert login.status_code == 200
    assert cors_of(login)["access-control-allow-origin"] == origin


@pytest.mark.parametrize("settings", [FIELD_ORIGINS | {"rate_limit_login_failures": 1}], indirect=True)
async def test_a_refusal_by_the_login_gate_is_readable_cross_origin(client):
    headers = {"Origin": FIELD_ORIGIN}
    body = {"phone_number": new_phone(), "password": "Wrong-Password-77"}
    assert (await client.post("/api/auth/login", headers=headers, json=body)).status_code == 401
    refused = await client.post("/api/auth/login", headers=headers, json=body)
    assert refused.status_code == 429
    assert cors_of(refused)["access-control-allow-origin"] == FIELD_ORIGIN
    assert cors_of(refused)["access-control-allow-credentials"] == "true"
    assert "retry-after" in cors_of(refused)["access-control-expose-headers"].lower()


@pytest.mark.parametrize("settings", [FIELD_ORIGINS], indirect=True)
@pytest.mark.parametrize("origin", ["https://evil.example.org", "https://a.b.vercel.app", "http://localhost.evil.com"])
async def test_a_disallowed_origin_gets_no_cors_headers(client, origin):
    preflight = await client.options("/api/auth/login", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.status_code == 403
    assert cors_of(preflight) == {}
    assert preflight.json()["code"] == "cors_origin_not_allowed" and preflight.json()["message"]
    for response in (
        await client.post("/api/auth/login", headers={"Origin": origin}, json={"phone_number": new_phone()}),
        await client.get("/health", headers={"Origin": origin}),
    ):
        assert cors_of(response) == {}
        assert varies_on_origin(response)


@pytest.mark.parametrize("settings", [{"cors_allow_origins": ["*"]}], indirect=True)
async def test_star_answers_any_origin_without_credentials(client):
    preflight = await client.options("/api/auth/login", headers={"Origin": FIELD_ORIGIN, **PREFLIGHT})
    assert preflight.status_code == 204
    assert cors_of(preflight)["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in cors_of(preflight)
    response = await client.post(
        "/api/auth/login", headers={"Origin": FIELD_ORIGIN}, json={"phone_number": new_phone()}
    )
    assert cors_of(response)["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in cors_of(response)


def test_star_warns_at_start_up_that_the_field_client_cannot_work(settings, caplog):
    import msgspec

    from app.asgi import create_app

    with caplog.at_level("WARNING", logger="app.asgi"):
        create_app(msgspec.structs.replace(settings, cors_allow_origins=["*"]))
    assert any("CORS_ALLOW_ORIGINS=*" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.asgi"):
        create_app(settings)
    assert not any("CORS_ALLOW_ORIGINS" in record.getMessage() for record in caplog.records)


async def test_development_default_admits_the_local_web_app(client):
    for origin in ("http://localhost:5173", "http://localhost:3000", "capacitor://localhost"):
        response = await client.options("/api/settings/account", headers={"Origin": origin, **PREFLIGHT})
        assert cors_of(response)["access-control-allow-origin"] == origin
    assert cors_of(await client.get("/health", headers={"Origin": "https://elsewhere.example"})) == {}


# ---- the settings page ---------------------------------------------------------------------------


def settings_save(user, **fields):
    """What the page's Save sends: the form's fields, enable_pin_auth always (client doc)."""
    body = {
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "phone_number": user["phone_number"],
        "enable_pin_auth": user["enable_pin_auth"],
    }
    if user.get("email"):
        body["email"] = user["email"]
    return {**body, **fields}


def signed_in_long_ago(app, access_token, seconds):
    """The same session's access token as a refresh would hand it out ``seconds`` after its sign-in."""
    issuer = app.state.token_issuer
    claims = issuer.decode(access_token, "access")
    signed_in = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    return issuer.issue_access(
        user_id=claims.user_id, role=claims.role, session_id=claims.session_id, auth_time=signed_in
    ).token


async def bundle_of(client, token):
    response = await client.get("/api/settings/bundle", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_pages_exact_body_with_the_box_unticked_turns_pin_sign_in_on(client):
    """Issue 21, finding 12: the checkbox (false) comes with the new PIN; the Flask route turned PIN sign-in on."""
    phone = new_phone()
    account = await registered(client, phone_number=phone, name="Aline Uwase", email="aline@example.org")
    body = {
        "first_name": "Aline",
        "last_name": "Uwase",
        "email": "aline@example.org",
        "phone_number": e164(phone),
        "enable_pin_auth": False,
        "new_pin": "5938",
    }  # as the settings page sends it (clients/web-client.md, "Settings page")
    saved = await client.put("/api/settings/account", headers=bearer(account["access_token"]), json=body)
    assert saved.status_code == 200, saved.text
    assert saved.json()["user"]["enable_pin_auth"] is True
    signed_in = await client.post("/api/auth/login", json={"phone_number": phone, "pin": "5938"})
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["auth_method"] == "pin"


async def test_register_then_set_a_pin_on_its_own_then_sign_in_by_pin(client):
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    user = (await bundle_of(client, account["access_token"]))["account"]
    assert user["enable_pin_auth"] is False
    saved = await client.put(
        "/api/settings/account",
        headers=bearer(account["access_token"]),
        json=settings_save(user, enable_pin_auth=True, new_pin=GOOD_PIN),
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["user"]["enable_pin_auth"] is True
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})).status_code == 200


async def test_after_the_window_a_pin_change_asks_for_a_fresh_sign_in(client, app):
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    stale = signed_in_long_ago(app, account["access_token"], 601)
    user = (await bundle_of(client, stale))["account"]
    refused = await client.put(
        "/api/settings/account", headers=bearer(stale), json=settings_save(user, enable_pin_auth=True, new_pin=GOOD_PIN)
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "reauthentication_required"
    assert refused.json()["message"] == "For your security, sign in again to change your PIN."
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})).status_code == 401
    # Other changes still save with the stale session: the page sends unchanged values along.
    renamed = await client.put(
        "/api/settings/account", headers=bearer(stale), json=settings_save(user, last_name="Ishimwe")
    )
    assert renamed.status_code == 200, renamed.text

    fresh = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    saved = await client.put(
        "/api/settings/account",
        headers=bearer(fresh.json()["access_token"]),
        json=settings_save(renamed.json()["user"], enable_pin_auth=True, new_pin=GOOD_PIN),
    )
    assert saved.status_code == 200, saved.text
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})).status_code == 200


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"new_password": OTHER_PASSWORD}, "your password"),
        ({"email": "aline@example.org"}, "your email address"),
        ({"enable_pin_auth": False}, "PIN sign-in"),
        ({"phone_number": "0788999111"}, "your phone number"),
    ],
)
async def test_every_sensitive_change_needs_a_recent_sign_in_or_the_password(client, app, change, named):
    account = await registered(client, pin=GOOD_PIN)
    stale = signed_in_long_ago(app, account["access_token"], 601)
    user = (await bundle_of(client, stale))["account"]
    refused = await client.put("/api/settings/account", headers=bearer(stale), json=settings_save(user, **change))
    assert refused.status_code == 403
    assert refused.json()["message"] == f"For your security, sign in again to change {named}."
    with_password = await client.put(
        "/api/settings/account",
        headers=bearer(stale),
        json=settings_save(user, current_password=STRONG_PASSWORD, **change),
    )
    assert with_password.status_code == 200, with_password.text


async def test_refresh_keeps_the_sign_in_time(client, app):
    account = await registered(client)
    issuer = app.state.token_issuer
    signed_in = issuer.decode(account["access_token"], "access").auth_time
    assert signed_in is not None
    header_form = await client.post("/api/auth/refresh", headers=bearer(account["refresh_token"]))
    body_form = await client.post("/api/auth/refresh", json={"refresh_token": account["refresh_token"]})
    assert issuer.decode(header_form.json()["access_token"], "access").auth_time == signed_in
    assert issuer.decode(body_form.json()["access_token"], "access").auth_time == signed_in
    rotated = await client.post("/api/auth/refresh", json={"refresh_token": body_form.json()["refresh_token"]})
    assert issuer.decode(rotated.json()["access_token"], "access").auth_time == signed_in


async def test_password_change_keeps_this_devices_tokens_and_ends_the_others(client):
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    other = (await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})).json()
    user = (await bundle_of(client, account["access_token"]))["account"]
    changed = await client.put(
        "/api/settings/account",
        headers=bearer(account["access_token"]),
        json=settings_save(user, current_password=STRONG_PASSWORD, new_password=OTHER_PASSWORD),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["message"] == "Profile updated. You were signed out on your other devices."
    # The page keeps the tokens it had: the same access token and the same refresh token work.
    assert (await client.get("/api/settings/bundle", headers=bearer(account["access_token"]))).status_code == 200
    refreshed = await client.post("/api/auth/refresh", headers=bearer(account["refresh_token"]))
    assert refreshed.status_code == 200
    assert (await client.get("/api/auth/profile", headers=bearer(refreshed.json()["access_token"]))).status_code == 200
    assert (await client.post("/api/auth/refresh", headers=bearer(other["refresh_token"]))).status_code == 401
    assert (await client.get("/api/auth/profile", headers=bearer(other["access_token"]))).status_code == 401


async def test_a_save_without_enable_pin_auth_keeps_pin_sign_in_on(client):
    phone = new_phone()
    account = await registered(client, phone_number=phone, pin=GOOD_PIN)
    saved = await client.put(
        "/api/settings/account", headers=bearer(account["access_token"]), json={"first_name": "Aline", "last_name": "K"}
    )
    assert saved.status_code == 200
    assert saved.json()["user"]["enable_pin_auth"] is True
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})).status_code == 200


async def test_enable_pin_auth_without_a_pin_is_a_field_error(client):
    account = await registered(client)
    response = await client.put(
        "/api/settings/account", headers=bearer(account["access_token"]), json={"enable_pin_auth": True}
    )
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["enable_pin_auth"]


async def test_bundle_and_privacy_round_trip(client, settings):
    account = await registered(client, user_type="adolescent")
    headers = bearer(account["access_token"])
    bundle = await bundle_of(client, account["access_token"])
    assert bundle["account"]["id"] == account["user_id"]
    assert bundle["umwari"]["server_key_configured"] is settings.umwari_server_key_configured is False
    assert bundle["privacy"] == {
        "allow_parent_access": False,
        "data_sharing_consent": False,
        "notification_preferences": {
            "cycle_reminders": True,
            "appointment_reminders": True,
            "health_tips": True,
            "new_features": False,
            "email": True,
            "sms": False,
        },
    }
    assert "linked_parents" not in bundle["privacy"]
    saved = await client.put(
        "/api/settings/privacy",
        headers=headers,
        json={"notification_preferences": {"sms": True, "health_tips": False}, "data_sharing_consent": True},
    )
    assert saved.status_code == 200, saved.text
    expected = {**bundle["privacy"]["notification_preferences"], "sms": True, "health_tips": False}
    assert saved.json()["privacy"]["notification_preferences"] == expected
    assert saved.json()["privacy"]["data_sharing_consent"] is True
    again = (await client.get("/api/settings/privacy", headers=headers)).json()
    assert again["privacy"] == saved.json()["privacy"]
    # One key at a time keeps the others.
    await client.put("/api/settings/privacy", headers=headers, json={"notification_preferences": {"email": False}})
    prefs = (await bundle_of(client, account["access_token"]))["privacy"]["notification_preferences"]
    assert prefs == {**expected, "email": False}

    parent_access = await client.put(
        "/api/settings/privacy/parent-access", headers=headers, json={"allow_parent_access": True}
    )
    assert parent_access.status_code == 200, parent_access.text
    assert parent_access.json()["user"]["allow_parent_access"] is True
    assert (await bundle_of(client, account["access_token"]))["privacy"]["allow_parent_access"] is True
    status = (await client.get("/api/settings/umwari/status", headers=headers)).json()
    assert status["umwari"] == {"server_key_configured": False}


@pytest.mark.parametrize("settings", [{"umwari_server_key_configured": True}], indirect=True)
async def test_umwari_status_reports_the_setting(client):
    account = await registered(client)
    assert (await bundle_of(client, account["access_token"]))["umwari"]["server_key_configured"] is True


async def test_unknown_preferences_are_field_errors(client):
    account = await registered(client)
    response = await client.put(
        "/api/settings/privacy",
        headers=bearer(account["access_token"]),
        json={"notification_preferences": {"sms": True, "push": True, "email": "yes"}},
    )
    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"notification_preferences.push", "notification_preferences.email"}
    prefs = (await bundle_of(client, account["access_token"]))["privacy"]["notification_preferences"]
    assert prefs["sms"] is False  # nothing of a refused request was saved


async def test_parent_access_from_a_parent_account_is_403(client):
    account = await registered(client, user_type="parent")
    response = await client.put(
        "/api/settings/privacy/parent-access",
        headers=bearer(account["access_token"]),
        json={"allow_parent_access": True},
    )
    assert response.status_code == 403
    assert response.json()["message"]
    assert (await bundle_of(client, account["access_token"]))["privacy"]["allow_parent_access"] is False


async def test_a_404_under_settings_names_the_path(client):
    account = await registered(client)
    response = await client.get("/api/settings/appearance", headers=bearer(account["access_token"]))
    assert response.status_code == 404
    assert "/api/settings/appearance" in response.json()["message"]
    assert "/api/settings/bundle" in response.json()["message"]
    general = await client.get("/api/nothing-here")
    assert general.status_code == 404 and "/schema" in general.json()["message"]


# ---- a wrong current_password is a password guess -------------------------------------------------


async def audit_reasons(db, phone, expected, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch("SELECT reason, success, user_id FROM login_attempts WHERE phone_number = $1", phone)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def test_21_wrong_current_passwords_lock_the_number_and_are_audited(client, db, settings):
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    headers = bearer(account["access_token"])
    attempts = settings.account_max_failures + 1
    answers = []
    for index in range(attempts):
        response = await client.put(
            "/api/settings/account",
            headers=headers,
            json={"current_password": f"Wrong-Guess-{index:03d}", "new_password": OTHER_PASSWORD},
        )
        answers.append(response.status_code)
    assert answers == [400] * settings.account_max_failures + [429]
    assert response.json()["code"] == "account_locked"
    assert int(response.headers["retry-after"]) > 0
    rows = await audit_reasons(db, e164(phone), attempts)
    assert len(rows) == attempts
    assert {(row["reason"], row["success"], row["user_id"]) for row in rows} == {
        ("reauth_failed", False, account["user_id"])
    }
    # The same budget as the login endpoint's: the right password cannot sign in now either.
    login = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert login.status_code == 429 and login.json()["code"] == "account_locked"


# ---- what a 429 tells the page ------------------------------------------------------------------

UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


def stated_wait(message):
    """The wait a message names, in seconds, and the size of its unit."""
    found = re.search(r"try again in (\d+) (second|minute|hour)s?\.$", message)
    assert found, message
    unit = UNIT_SECONDS[found[2]]
    return int(found[1]) * unit, unit


def assert_names_the_wait(response, code):
    """The page shows only ``message`` (it ignores Retry-After): the message names the same wait, rounded up,
    in seconds under a minute, in minutes under two hours, in hours beyond."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == code
    retry_after = int(response.headers["Retry-After"])
    assert body["retry_after"] == retry_after
    stated, unit = stated_wait(body["message"])
    assert unit == (1 if retry_after < 60 else 60 if retry_after < 7200 else 3600), body["message"]
    assert retry_after <= stated < retry_after + unit, (body["message"], retry_after)


LIMITS_TO_REACH = {
    "account_max_failures": 2,
    "account_window_seconds": 3 * 3600,
    "register_limit": 2,
    "register_window_seconds": 45,
    "profile_identifier_changes": 1,
}


@pytest.mark.parametrize("settings", [LIMITS_TO_REACH], indirect=True)
async def test_every_429_of_the_page_says_how_long_to_wait(client):
    """Issue 21, finding 13: sign-in, registration and profile refusals name the wait in the message."""
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    headers = bearer(account["access_token"])
    await registered(client)
    assert_names_the_wait(await register(client), "rate_limited")  # seconds: a 45 s window

    email = await client.put("/api/settings/account", headers=headers, json={"email": "aline@example.org"})
    assert email.status_code == 200, email.text
    again = await client.put("/api/settings/account", headers=headers, json={"email": "uwase@example.org"})
    assert_names_the_wait(again, "rate_limited")  # minutes: an hour's budget

    for index in range(3):
        reauth = await client.put(
            "/api/settings/account",
            headers=headers,
            json={"current_password": f"Wrong-Guess-{index:03d}", "new_password": OTHER_PASSWORD},
        )
    assert_names_the_wait(reauth, "account_locked")  # hours: a three-hour window

    for number in (new_phone(), new_phone()):  # two numbers, two wrong passwords each: the client's 4 of 5
        for _ in range(2):
            wrong = await client.post("/api/auth/login", json={"phone_number": number, "password": "Wrong-Guess-7"})
            assert wrong.status_code == 401
    locked = await client.post("/api/auth/login", json={"phone_number": number, "password": "Wrong-Guess-7"})
    assert_names_the_wait(locked, "account_locked")
    fifth = await client.post("/api/auth/login", json={"phone_number": new_phone(), "password": "Wrong-Guess-7"})
    assert fifth.status_code == 401
    refused = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert_names_the_wait(refused, "rate_limited")  # the client's budget: 15 minutes
    assert "sign-in" in refused.json()["message"]
