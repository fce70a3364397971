"""Attacks on client credentials and introspection, through the served app with real Postgres and Redis.

The attacker here is a service (or whoever stole its secret): it holds tokens from ``POST /oauth/token``
and tries to keep or widen what they grant after the operator acted, or to break the token endpoint with
odd client authentication.
"""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from typing import Any

from app.core.settings import Settings
from tests.helpers import bearer, registered
from tests.platform.support import arun_cli, new_credential

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


async def access_token(client: Any, name: str, secret: str) -> str:
    answer = await client.post(
        "/oauth/token", headers={**basic(name, secret), **FORM}, content=b"grant_type=client_credentials"
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


async def test_rotating_a_stolen_credential_ends_the_thiefs_access_tokens(client: Any, settings: Settings) -> None:
    """The operator's answer to a leak: revoke, then issue the name a new credential (the documented rotation).

    The thief's access token, minted from the leaked secret before the revocation, named the credential
    only by its name: a new live credential of that name made it good again on the internal routes and
    active at introspection, for the rest of its lifetime.
    """
    name = unique("leaky")
    leaked = await new_credential(settings, name, "introspect", "users:read")
    stolen = await access_token(client, name, leaked)
    user = await registered(client)

    assert (await arun_cli(settings, "services", "revoke", name)).exit_code == 0
    refused = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(stolen))
    assert refused.status_code == 401, refused.text

    rotated = await new_credential(settings, name, "introspect", "users:read")
    read = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(stolen))
    assert read.status_code == 401, f"the revoked credential's token reads accounts again: {read.text}"
    seen = await client.post(
        "/api/auth/introspect", headers={**bearer(rotated), **FORM}, content=f"token={stolen}".encode()
    )
    assert seen.status_code == 200 and seen.json() == {"active": False}, seen.text

    fresh = await access_token(client, name, rotated)  # the new credential's own tokens work
    assert (await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(fresh))).status_code == 200


async def test_a_non_ascii_client_id_is_refused_not_a_500(client: Any, settings: Settings) -> None:
    """RFC 6749 section 2.3.1 form-urlencodes the client id inside Basic: any character can arrive, with a
    real secret beside it (a client misconfigured, or probing). The name check must answer 401, not crash."""
    name = unique("unicode")
    secret = await new_credential(settings, name, "introspect")
    odd_ids = {
        "basic, percent-encoded": basic(urllib.parse.quote("clinic-é"), secret),
        "basic, raw UTF-8": basic("clinic-é", secret),
        "basic, the name with a right-to-left mark": basic(name + "\u200f", secret),
    }
    for how, headers in odd_ids.items():
        answer = await client.post(
            "/oauth/token", headers={**headers, **FORM}, content=b"grant_type=client_credentials"
        )
        assert answer.status_code == 401, f"{how}: {answer.status_code} {answer.text}"
        assert answer.json()["code"] == "invalid_service_credential"
    posted = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": "clinic-ü", "client_secret": secret}
    ).encode()
    answer = await client.post("/oauth/token", headers=FORM, content=posted)
    assert answer.status_code == 401, f"client_secret_post: {answer.status_code} {answer.text}"
    answer = await client.post("/api/auth/introspect", headers={**basic("ünicode", secret), **FORM}, content=b"token=x")
    assert answer.status_code == 401, f"introspection: {answer.status_code} {answer.text}"


async def test_basic_credentials_with_encoded_colon_and_plus(client: Any, settings: Settings) -> None:
    """The right name, form-urlencoded as RFC 6749 asks (its ``-`` and ``.`` unchanged, a ``+`` for nothing):
    accepted; a name that differs only once decoded (``%2D`` for ``-``) is the same name, and a secret
    with a stray ``+`` or a second colon is refused."""
    name = unique("enc")
    secret = await new_credential(settings, name, "introspect")
    encoded_name = name.replace("-", "%2D")
    ok = await client.post(
        "/oauth/token", headers={**basic(encoded_name, secret), **FORM}, content=b"grant_type=client_credentials"
    )
    assert ok.status_code == 200, ok.text
    for bad in (basic(name, secret + ":x"), basic(name, secret[:-1] + "+"), basic(name + ":" + secret, "")):
        answer = await client.post("/oauth/token", headers={**bad, **FORM}, content=b"grant_type=client_credentials")
        assert answer.status_code == 401, answer.text


async def test_a_service_token_opens_no_user_staff_or_wider_door(client: Any, settings: Settings) -> None:
    """A services' token (aud = the issuer, ``type: service``) where users' and staff's tokens go, a scope the
    credential lacks asked for, and a token of one scope used on another's route."""
    name = unique("narrow")
    secret = await new_credential(settings, name, "introspect")
    token = await access_token(client, name, secret)
    user = await registered(client)
    for method, path in [
        ("GET", "/api/auth/profile"),
        ("GET", "/api/auth/sessions"),
        ("POST", "/api/auth/logout"),
        ("GET", "/api/admin/users/"),
        ("GET", f"/api/admin/users/{user['user_id']}"),
        ("GET", "/api/audit/login-attempts"),
        ("GET", "/api/audit/queries"),
        ("GET", "/api/audit/admin-actions/"),
        ("GET", f"/api/internal/users/{user['user_id']}"),  # users:read, which this credential lacks
    ]:
        answer = await client.request(method, path, headers=bearer(token))
        assert answer.status_code in (401, 403), f"{method} {path}: {answer.status_code} {answer.text}"

    wider = await client.post(
        "/oauth/token",
        headers={**basic(name, secret), **FORM},
        content=b"grant_type=client_credentials&scope=introspect+users%3Aread",
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope", wider.text
    renewed = await client.post(  # an access token cannot mint another (nor outlive its credential that way)
        "/oauth/token", headers={**bearer(token), **FORM}, content=b"grant_type=client_credentials"
    )
    assert renewed.status_code == 401, renewed.text
