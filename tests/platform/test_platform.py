"""Service credentials, introspection (RFC 7662) and the internal users API, through the served app."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from app.core.settings import Settings
from tests.helpers import bearer, registered
from tests.platform.support import arun_cli, new_credential, run_cli

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_services_create_list_revoke(settings: Settings, subtests: pytest.Subtests) -> None:
    name = unique("platform")
    created = run_cli(settings, "services", "create", name, "--scope", "introspect", "--scope", "users:read")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("les_") and len(token) == 47

    listed = run_cli(settings, "services", "list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert "introspect users:read" in line and line.rstrip().endswith("-")
    assert token not in listed.output and hashlib.sha256(token.encode()).hexdigest() not in listed.output

    with subtests.test("a second live credential of the same name is refused"):
        again = run_cli(settings, "services", "create", name, "--scope", "introspect")
        assert again.exit_code == 1 and "revoke it first" in again.output
    with subtests.test("unknown scopes and names are usage errors"):
        assert run_cli(settings, "services", "create", unique("x"), "--scope", "admin:everything").exit_code == 2
        assert run_cli(settings, "services", "create", "Bad Name!", "--scope", "introspect").exit_code == 2

    revoked = run_cli(settings, "services", "revoke", name)
    assert revoked.exit_code == 0, revoked.output
    line = next(line for line in run_cli(settings, "services", "list").stdout.splitlines() if line.startswith(name))
    assert not line.rstrip().endswith(" -")
    assert run_cli(settings, "services", "revoke", name).exit_code == 1
    # The name can be given a new credential once the old one is revoked.
    assert run_cli(settings, "services", "create", name, "--scope", "introspect").exit_code == 0


async def introspect(client: Any, credential: str, token: str, *, as_json: bool = False) -> Any:
    if as_json:
        return await client.post("/api/auth/introspect", headers=bearer(credential), json={"token": token})
    return await client.post(
        "/api/auth/introspect", headers={**bearer(credential), **FORM}, content=f"token={token}".encode()
    )


async def test_introspection_sees_a_logout_at_once(client: Any, settings: Settings, db: Any) -> None:
    name = unique("clinic")
    credential = await new_credential(settings, name, "introspect")
    user = await registered(client)
    access, refresh = user["access_token"], user["refresh_token"]

    for as_json in (False, True):
        answer = await introspect(client, credential, access, as_json=as_json)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["active"] is True and body["sub"] == str(user["user_id"]) and body["type"] == "access"
        assert body["token_type"] == "Bearer"  # RFC 7662 / RFC 6749 section 7.1
        assert body["iss"] == settings.jwt_issuer and body["aud"] == settings.jwt_audience
        assert body["exp"] > body["iat"] and body["role"] == "user" and body["sid"]
    refreshed = (await introspect(client, credential, refresh)).json()
    assert refreshed["active"] is True and refreshed["type"] == "refresh" and refreshed["sid"] == body["sid"]
    assert refreshed["token_type"] == "refresh_token"

    assert (await client.post("/api/auth/logout", headers=bearer(access))).status_code == 200
    for token in (access, refresh, "not-a-token", access + "x"):
        answer = await introspect(client, credential, token)
        assert answer.status_code == 200 and answer.json() == {"active": False}

    rows = await db.fetch("SELECT * FROM audit_queries WHERE actor = $1 ORDER BY id", f"service:{name}")
    assert [row["action"] for row in rows] == ["introspect"] * 7
    assert {row["origin"] for row in rows} == {"service"}
    assert [row["row_count"] for row in rows] == [1, 1, 1, 0, 0, 0, 0]
    assert all(access not in row["filters"] and refresh not in row["filters"] for row in rows)


async def test_introspection_needs_a_token_field(client: Any, settings: Settings) -> None:
    credential = await new_credential(settings, unique("clinic"), "introspect")
    for kwargs in (
        {"json": {}},
        {"json": {"token": 5}},
        {"content": b"token_type_hint=access_token", "headers": FORM},
        {"content": b""},
    ):
        headers = {**bearer(credential), **kwargs.pop("headers", {})}
        answer = await client.post("/api/auth/introspect", headers=headers, **kwargs)
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"] == [{"field": "token", "message": "Send the token to introspect."}]
    garbled = await client.post(
        "/api/auth/introspect", headers={**bearer(credential), "Content-Type": "application/json"}, content=b"{"
    )
    assert garbled.status_code == 400 and garbled.json()["code"] == "malformed_json"
    oversized = await client.post(
        "/api/auth/introspect",
        headers={**bearer(credential), **FORM},
        content=b"token=" + b"x" * settings.max_body_bytes,
    )
    assert oversized.status_code == 413 and oversized.json()["code"] == "payload_too_large"
    text = await client.post(
        "/api/auth/introspect", headers={**bearer(credential), "Content-Type": "text/plain"}, content=b"token=x"
    )
    assert text.status_code == 415 and text.json()["code"] == "unsupported_media_type"


async def test_platform_routes_refuse_users_and_bad_credentials(client: Any, settings: Settings) -> None:
    user = await registered(client)
    reader = await new_credential(settings, unique("reports"), "users:read")
    revoked_name = unique("old")
    revoked = await new_credential(settings, revoked_name, "introspect", "users:read")
    assert (await arun_cli(settings, "services", "revoke", revoked_name)).exit_code == 0

    routes = [
        ("POST", "/api/auth/introspect", {"json": {"token": user["access_token"]}}),
        ("GET", f"/api/internal/users/{user['user_id']}", {}),
    ]
    cases = {
        None: (401, "invalid_service_credential"),
        "Bearer": (401, "invalid_service_credential"),
        "Basic dXNlcjpwYXNz": (401, "invalid_service_credential"),
        "Bearer les_short": (401, "invalid_service_credential"),
        "Bearer les_" + "A" * 43: (401, "invalid_service_credential"),  # well formed, never issued
        f"Bearer {revoked}": (401, "invalid_service_credential"),
        f"Bearer {user['access_token']}": (403, "service_credential_required"),
        f"Bearer {user['refresh_token']}": (403, "service_credential_required"),
    }
    for method, path, kwargs in routes:
        for authorization, (status, code) in cases.items():
            headers = {"Authorization": authorization} if authorization else {}
            answer = await client.request(method, path, headers=headers, **kwargs)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (path, authorization, answer.text)
            assert answer.json()["message"]
    # A credential without the route's scope.
    answer = await client.post("/api/auth/introspect", headers=bearer(reader), json={"token": user["access_token"]})
    assert answer.status_code == 403 and answer.json()["code"] == "insufficient_scope"


async def test_internal_users_gives_profile_fields_and_no_secrets(client: Any, settings: Settings, db: Any) -> None:
    name = unique("cycles")
    reader = await new_credential(settings, name, "users:read")
    user = await registered(client, pin="4827", email="aline@example.org")
    answer = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(reader))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == user["user_id"] and body["phone_number"] == user["user"]["phone_number"]
    assert body["email"] == "aline@example.org" and body["pin_enabled"] is True
    hashes = await db.fetchrow("SELECT password_hash, pin_hash FROM users WHERE id = $1", user["user_id"])
    assert not {"password_hash", "pin_hash", "password", "pin"} & body.keys()
    assert hashes["password_hash"] not in answer.text and hashes["pin_hash"] not in answer.text

    for missing in (user["user_id"] + 1000, 0, 2**63, 10**30):
        gone = await client.get(f"/api/internal/users/{missing}", headers=bearer(reader))
        assert gone.status_code == 404 and gone.json()["code"] in {"user_not_found", "not_found"}, gone.text
    rows = await db.fetch("SELECT action, filters, row_count FROM audit_queries WHERE actor = $1", f"service:{name}")
    assert [(row["action"], row["row_count"]) for row in rows][:2] == [("user", 1), ("user", 0)]


async def test_jwks_publishes_the_signing_key_and_nothing_private(client: Any, settings: Settings) -> None:
    import jwt

    user = await registered(client)
    for headers in ({}, {"Authorization": "Bearer garbage"}, {"Accept": "text/html"}, {"If-None-Match": '"\x7f'}):
        answer = await client.get("/.well-known/jwks.json", headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == f"public, max-age={settings.jwks_max_age_seconds}"
    keys = answer.json()["keys"]
    assert all(key["use"] == "sig" and key["alg"] in {"ES256", "EdDSA"} and "d" not in key for key in keys)
    kid = jwt.get_unverified_header(user["access_token"])["kid"]
    published = {key["kid"]: key for key in keys}
    verified = jwt.decode(
        user["access_token"],
        jwt.PyJWK(published[kid]).key,
        algorithms=[published[kid]["alg"]],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    assert verified["sub"] == str(user["user_id"])
