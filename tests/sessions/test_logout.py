import hashlib
import uuid

import jwt

from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered


async def session_for(client, phone):
    response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    return response.json()


async def test_logout_makes_the_access_token_useless(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    tokens = await session_for(client, phone)
    assert (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).status_code == 200
    response = await client.post("/api/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.json()["message"]
    after = await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))
    assert after.status_code == 401
    assert (await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))).status_code == 401


async def test_logout_ends_only_that_session(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    phone_session = await session_for(client, phone)
    web_session = await session_for(client, phone)
    await client.post("/api/auth/logout", headers=bearer(phone_session["access_token"]))
    assert (await client.get("/api/auth/profile", headers=bearer(web_session["access_token"]))).status_code == 200


async def test_logout_with_refresh_token_in_body(client):
    phone = new_phone()
    await registered(client, phone_number=phone)
    tokens = await session_for(client, phone)
    response = await client.post("/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200
    assert (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).status_code == 401


async def test_logout_needs_a_genuine_token(client):
    assert (await client.post("/api/auth/logout")).status_code == 401
    assert (await client.post("/api/auth/logout", headers=bearer("a.b.c"))).status_code == 401


async def test_a_replaced_legacy_refresh_jwt_cannot_log_the_session_out(client, db, settings):
    """Logout by refresh token follows the refresh endpoint's rules: a refresh JWT from before opaque
    tokens, replaced a day ago, names no session any more (it used to end it, and never counted as reuse)."""
    tokens = await registered(client)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    jti = uuid.uuid4()
    legacy = jwt.encode(
        {**claims, "type": "refresh", "jti": str(jti), "exp": claims["exp"] + 86_400},
        settings.jwt_secret,
        algorithm="HS256",
    )
    await db.execute(
        "INSERT INTO refresh_tokens (jti, session_id, token_hash, expires_at, rotated_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, now() + interval '20 days', now() - interval '1 day', now(), now())",
        jti,
        uuid.UUID(claims["sid"]),
        hashlib.sha256(legacy.encode()).hexdigest(),
    )
    refused = await client.post("/api/auth/logout", json={"refresh_token": legacy})
    assert refused.status_code == 401, refused.text
    profile = await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))
    assert profile.status_code == 200  # the session the old token named goes on
