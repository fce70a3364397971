"""Sessions ("my devices"): list, end one, end all others; the admin view of them."""

from __future__ import annotations

import uuid

import pytest

from tests.admin.support import KINDS, account_of_kind, login, panel_admin
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

SESSIONS = "/api/auth/sessions"


async def _sign_in(client, phone: str, user_agent: str) -> dict:
    response = await client.post(
        "/api/auth/login",
        json={"phone_number": phone, "password": STRONG_PASSWORD},
        headers={"User-Agent": user_agent},
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_signed_in_account_sees_only_its_own_sessions(client, db, kind):
    headers, _ = await account_of_kind(client, db, kind)
    other = await registered(client)
    mine = await client.get(SESSIONS, headers=headers)
    assert mine.status_code == 200
    assert len(mine.json()["sessions"]) == 1
    other_sessions = (await client.get(SESSIONS, headers=bearer(other["access_token"]))).json()["sessions"]
    refused = await client.delete(f"{SESSIONS}/{other_sessions[0]['id']}", headers=headers)
    assert refused.status_code == 404
    assert (await client.post("/api/auth/refresh", headers=bearer(other["refresh_token"]))).status_code == 200
    assert (await client.post("/api/auth/logout-all", headers=headers)).status_code == 200
    for method, path in (("GET", SESSIONS), ("DELETE", f"{SESSIONS}/{uuid.uuid4()}"), ("POST", "/api/auth/logout-all")):
        assert (await client.request(method, path)).status_code == 401


async def test_sessions_list_last_use_and_end(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    phone_app = await _sign_in(client, phone, "LadysEssence/3.1 (Android 12)")
    browser = await _sign_in(client, phone, "Mozilla/5.0 (X11; Linux x86_64)")
    refreshed = await client.post(
        "/api/auth/refresh",
        headers={**bearer(phone_app["refresh_token"]), "User-Agent": "LadysEssence/3.2 (Android 13)"},
    )
    assert refreshed.status_code == 200

    listed = await client.get(SESSIONS, headers=bearer(browser["access_token"]))
    assert listed.status_code == 200
    sessions = listed.json()["sessions"]
    assert len(sessions) == 3  # the registration's, the app's, the browser's
    current = [item for item in sessions if item["current"]]
    assert len(current) == 1 and current[0]["user_agent"].startswith("Mozilla/5.0")
    assert sessions[0]["user_agent"] == "LadysEssence/3.2 (Android 13)"  # most recently used first
    assert sessions[0]["ip_address"] == "127.0.0.1"
    assert sessions[0]["last_used_at"] >= sessions[0]["created_at"]

    ended = await client.delete(f"{SESSIONS}/{sessions[0]['id']}", headers=bearer(browser["access_token"]))
    assert ended.status_code == 200
    assert (await client.post("/api/auth/refresh", headers=bearer(phone_app["refresh_token"]))).status_code == 401
    assert (await client.get("/api/auth/profile", headers=bearer(phone_app["access_token"]))).status_code == 401
    again = await client.delete(f"{SESSIONS}/{sessions[0]['id']}", headers=bearer(browser["access_token"]))
    assert again.status_code == 404
    assert again.json()["message"]
    assert len((await client.get(SESSIONS, headers=bearer(browser["access_token"]))).json()["sessions"]) == 2


async def test_logout_all_keeps_only_this_session(client, db):
    phone = new_phone()
    first = await registered(client, phone_number=phone)
    second = await _sign_in(client, phone, "okhttp/4.12.0")
    third = await _sign_in(client, phone, "okhttp/4.12.0")
    response = await client.post("/api/auth/logout-all", headers=bearer(third["access_token"]))
    assert response.status_code == 200
    assert response.json()["ended"] == 2
    for gone in (first, second):
        assert (await client.post("/api/auth/refresh", headers=bearer(gone["refresh_token"]))).status_code == 401
    assert (await client.get("/api/auth/profile", headers=bearer(third["access_token"]))).status_code == 200
    assert (await client.post("/api/auth/refresh", headers=bearer(third["refresh_token"]))).status_code == 200
    event = await db.fetchrow(
        "SELECT type, payload FROM account_events WHERE user_id = $1 ORDER BY seq DESC LIMIT 1", first["user_id"]
    )
    assert event["type"] == "account.sessions_revoked"


async def test_the_admin_account_view_lists_and_ends_sessions(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    stolen = await _sign_in(client, phone, "Stolen phone")
    await login(client, phone, password="wrong-password-1")
    detail = await client.get(f"/api/admin/users/{user['user_id']}", headers=headers)
    assert detail.status_code == 200
    data = detail.json()["data"]
    assert "password_hash" not in detail.text and "pin_hash" not in detail.text
    assert len(data["sessions"]) == 2
    target = next(item for item in data["sessions"] if item["user_agent"] == "Stolen phone")
    assert all(item["current"] is False for item in data["sessions"])
    ended = await client.delete(f"/api/admin/users/{user['user_id']}/sessions/{target['id']}", headers=headers)
    assert ended.status_code == 200
    assert (await client.post("/api/auth/refresh", headers=bearer(stolen["refresh_token"]))).status_code == 401
    assert (await client.post("/api/auth/refresh", headers=bearer(user["refresh_token"]))).status_code == 200
    other = await registered(client)
    mismatch = await client.delete(f"/api/admin/users/{other['user_id']}/sessions/{target['id']}", headers=headers)
    assert mismatch.status_code == 404
