import asyncio

import pytest

from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered


async def signed_in(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    return response.json()


async def header_refresh(client, token):
    # The Flask-era client: Bearer refresh token, no body, no content type.
    return await client.post("/api/auth/refresh", headers=bearer(token))


async def body_refresh(client, token):
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


async def test_header_form_reuses_the_same_refresh_token_again_and_again(client):
    tokens = await signed_in(client)
    for _ in range(3):
        response = await header_refresh(client, tokens["refresh_token"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert "refresh_token" not in body
        profile = await client.get("/api/auth/profile", headers=bearer(body["access_token"]))
        assert profile.status_code == 200


async def test_header_form_burst_all_succeed_until_logout(client):
    tokens = await signed_in(client)
    burst = await asyncio.gather(*(header_refresh(client, tokens["refresh_token"]) for _ in range(11)))
    assert [r.status_code for r in burst] == [200] * 11
    logout = await client.post("/api/auth/logout", headers=bearer(tokens["access_token"]))
    assert logout.status_code == 200
    after = await header_refresh(client, tokens["refresh_token"])
    assert after.status_code == 401


async def test_body_form_rotates(client):
    tokens = await signed_in(client)
    first = await body_refresh(client, tokens["refresh_token"])
    assert first.status_code == 200, first.text
    rotated = first.json()["refresh_token"]
    assert rotated != tokens["refresh_token"]
    second = await body_refresh(client, rotated)
    assert second.status_code == 200
    assert second.json()["refresh_token"] not in (rotated, tokens["refresh_token"])


async def test_body_form_concurrent_refreshes_inside_grace_both_succeed(client):
    tokens = await signed_in(client)
    results = await asyncio.gather(*(body_refresh(client, tokens["refresh_token"]) for _ in range(4)))
    assert [r.status_code for r in results] == [200] * 4
    for result in results:
        assert (await body_refresh(client, result.json()["refresh_token"])).status_code == 200


@pytest.mark.parametrize("settings", [{"refresh_reuse_grace_seconds": 0}], indirect=True)
async def test_body_form_reuse_after_grace_revokes_the_whole_family(client, db):
    tokens = await signed_in(client)
    rotated = (await body_refresh(client, tokens["refresh_token"])).json()["refresh_token"]
    await asyncio.sleep(0.05)
    reuse = await body_refresh(client, tokens["refresh_token"])
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "refresh_token_reused"
    # The legitimate holder of the newer token is signed out too, and so is the access token.
    assert (await body_refresh(client, rotated)).status_code == 401
    assert (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).status_code == 401
    rows = await db.fetch("SELECT end_reason FROM sessions ORDER BY created_at")
    registration, login = rows
    assert login["end_reason"] == "reuse_detected"
    assert registration["end_reason"] is None  # another session of the same user stays


@pytest.mark.parametrize("settings", [{"refresh_rotation": "never"}], indirect=True)
async def test_rotation_never_keeps_the_body_token(client):
    tokens = await signed_in(client)
    response = await body_refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    assert "refresh_token" not in response.json()


@pytest.mark.parametrize("settings", [{"refresh_rotation": "always"}], indirect=True)
async def test_rotation_always_rotates_the_header_form(client):
    tokens = await signed_in(client)
    response = await header_refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    assert response.json()["refresh_token"] != tokens["refresh_token"]


async def test_access_token_is_not_a_refresh_token(client):
    tokens = await signed_in(client)
    assert (await header_refresh(client, tokens["access_token"])).status_code == 401
    assert (await body_refresh(client, tokens["access_token"])).status_code == 401


async def test_refresh_token_is_not_an_access_token(client):
    tokens = await signed_in(client)
    response = await client.get("/api/auth/profile", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 401


async def test_refresh_without_any_token_is_401(client):
    response = await client.post("/api/auth/refresh")
    assert response.status_code == 401
    assert response.json()["message"]


async def test_refresh_for_deactivated_user_fails(client, db):
    tokens = await signed_in(client)
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", tokens["user_id"])
    assert (await header_refresh(client, tokens["refresh_token"])).status_code == 401
    assert (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).status_code == 401


async def test_only_a_hash_of_the_refresh_token_is_stored(client, db):
    tokens = await signed_in(client)
    rows = await db.fetch("SELECT token_hash FROM refresh_tokens")
    assert rows and all(tokens["refresh_token"] not in row["token_hash"] for row in rows)
    assert all(len(row["token_hash"]) == 64 for row in rows)


@pytest.mark.parametrize("settings", [{"refresh_reuse_grace_seconds": 0}], indirect=True)
async def test_rotated_token_replayed_in_header_form_also_revokes(client):
    tokens = await signed_in(client)
    rotated = (await body_refresh(client, tokens["refresh_token"])).json()["refresh_token"]
    await asyncio.sleep(0.05)
    replay = await header_refresh(client, tokens["refresh_token"])
    assert replay.status_code == 401
    assert replay.json()["code"] == "refresh_token_reused"
    assert (await body_refresh(client, rotated)).status_code == 401
