"""Forged and unfit JWTs against the HTTP API: profile, refresh (both forms) and logout.

tests/sessions/test_tokens.py checks the decoder; here every forgery goes through the served app and
must get the one ``invalid_token`` answer everywhere, and a forged logout must not end the session
it names. Forgeries start from a genuine token's claims (real user, real session, real ``jti``), so
only the forged part can be what refuses them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from app.core.errors import InvalidToken
from app.core.settings import Settings
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

FORGED = {"message": InvalidToken.message, "code": "invalid_token"}
ATTACKER_KEY = b"attacker-chosen-key-of-thirty-two-bytes!"
HMACS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return payload


def encode(header: dict[str, Any], payload: dict[str, Any], key: bytes | None, alg: str = "HS256") -> str:
    """A compact JWS with exactly this header; signed with HMAC ``alg`` under ``key``, unsigned for None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), HMACS[alg]).digest()
    return f"{signing_input}.{b64(signature)}"


def now() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp())


OUR_SECRET = None  # resign() with this key signs with the service's own secret
HS256 = {"alg": "HS256", "typ": "JWT"}


def resign(
    header: dict[str, Any], key: bytes | None, alg: str = "HS256", **changes: Any
) -> Callable[[str, bytes], str]:
    """Claims of the genuine token with ``changes`` (None drops a claim, a callable is called at forge time)."""

    def forge(genuine: str, secret: bytes) -> str:
        payload = {**claims_of(genuine), **{k: v() if callable(v) else v for k, v in changes.items()}}
        payload = {k: v for k, v in payload.items() if v is not None}
        return encode(header, payload, secret if key is None else key, alg)

    return forge


def _unsigned(alg: str) -> Callable[[str, bytes], str]:
    return lambda genuine, _: encode({"alg": alg, "typ": "JWT"}, claims_of(genuine), None)


def _none_keeping_signature(genuine: str, _: bytes) -> str:
    _, payload, signature = genuine.split(".")
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}.{signature}"


def _asymmetric(alg: str, signature_bytes: int) -> Callable[[str, bytes], str]:
    """RS256/ES256 headers: random signatures, or an HMAC under our own secret (classic key confusion)."""

    def forge(genuine: str, secret: bytes) -> str:
        head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body = genuine.split(".")[1]
        signature = (
            hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if signature_bytes == 0
            else os.urandom(signature_bytes)
        )
        return f"{head}.{body}.{b64(signature)}"

    return forge


def _tampered_payload(genuine: str, _: bytes) -> str:
    head, _, signature = genuine.split(".")
    payload = {**claims_of(genuine), "sub": str(int(claims_of(genuine)["sub"]) + 1), "role": "admin"}
    return f"{head}.{b64(json.dumps(payload).encode())}.{signature}"


def _flipped_signature(genuine: str, _: bytes) -> str:
    head, body, signature = genuine.split(".")
    raw = bytearray(unb64(signature))
    raw[-1] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def _truncated_signature(genuine: str, _: bytes) -> str:
    head, body, signature = genuine.split(".")
    return f"{head}.{body}.{signature[:-4]}"


def _expired_and_forged(genuine: str, _: bytes) -> str:
    """Forged and expired: the answer must not be ``token_expired``, which would vouch for the signature."""
    return resign(HS256, ATTACKER_KEY, exp=now() - 3600, iat=now() - 7200, nbf=now() - 7200)(genuine, ATTACKER_KEY)


FORGERIES: dict[str, Callable[[str, bytes], str]] = {
    "alg-none": _unsigned("none"),
    "alg-None": _unsigned("None"),
    "alg-NONE": _unsigned("NONE"),
    "alg-none-keeping-signature": _none_keeping_signature,
    "alg-empty": _unsigned(""),
    "rs256-header-random-signature": _asymmetric("RS256", 256),
    "es256-header-random-signature": _asymmetric("ES256", 64),
    "rs256-header-hmac-with-our-secret": _asymmetric("RS256", 0),
    "es256-header-hmac-with-our-secret": _asymmetric("ES256", 0),
    "hs512-with-our-secret": resign({"alg": "HS512", "typ": "JWT"}, OUR_SECRET, "HS512"),
    "hs384-with-our-secret": resign({"alg": "HS384", "typ": "JWT"}, OUR_SECRET, "HS384"),
    "hs512-header-hs256-signature": resign({"alg": "HS512", "typ": "JWT"}, OUR_SECRET, "HS256"),
    "attacker-key": resign(HS256, ATTACKER_KEY),
    "empty-key-kid-dev-null": resign({**HS256, "kid": "../../../../../../dev/null"}, b""),
    "jwk-embedded-attacker-key": resign(
        {**HS256, "jwk": {"kty": "oct", "k": b64(ATTACKER_KEY), "alg": "HS256"}}, ATTACKER_KEY
    ),
    "jku-attacker-jwks": resign({**HS256, "jku": "https://attacker.example/jwks.json", "kid": "1"}, ATTACKER_KEY),
    "x5u-attacker-cert": resign({**HS256, "x5u": "https://attacker.example/cert.pem"}, ATTACKER_KEY),
    "kid-sql-injection": resign({**HS256, "kid": "x' UNION SELECT 'attacker-chosen-key' --"}, ATTACKER_KEY),
    "tampered-payload": _tampered_payload,
    "flipped-signature-bit": _flipped_signature,
    "truncated-signature": _truncated_signature,
    "wrong-audience": resign(HS256, OUR_SECRET, aud="someone-else"),
    "audience-list-without-ours": resign(HS256, OUR_SECRET, aud=["someone-else", "another"]),
    "wrong-issuer": resign(HS256, OUR_SECRET, iss="https://attacker.example"),
    "no-audience": resign(HS256, OUR_SECRET, aud=None),
    "no-expiry": resign(HS256, OUR_SECRET, exp=None),
    "no-session": resign(HS256, OUR_SECRET, sid=None),
    "not-yet-valid": resign(HS256, OUR_SECRET, nbf=lambda: now() + 600),
    "expired-and-forged": _expired_and_forged,
    "five-segments": lambda genuine, _: genuine + ".e30.e30",
    "two-segments": lambda genuine, _: genuine.rsplit(".", 1)[0],
}


async def signed_in(client: Any) -> dict[str, Any]:
    phone = new_phone()
    await registered(client, phone_number=phone)
    response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def assert_refused(response: Any, expected: dict[str, str] = FORGED) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == expected
    assert "access_token" not in response.text


def legacy_refresh_jwt(access_token: str, secret: bytes, **changes: Any) -> str:
    """A refresh JWT of the session, in the form issued before refresh tokens became opaque (still read)."""
    return encode(HS256, {**claims_of(access_token), "type": "refresh", **changes}, secret)


async def test_forged_tokens_are_refused_everywhere_and_end_nothing(
    client: Any, settings: Settings, subtests: pytest.Subtests
) -> None:
    assert settings.jwt_secret
    secret = settings.jwt_secret.encode()
    tokens = await signed_in(client)
    refresh_jwt = legacy_refresh_jwt(tokens["access_token"], secret)
    for name, forgery in FORGERIES.items():
        with subtests.test(forgery=name):
            forged_access = forgery(tokens["access_token"], secret)
            forged_refresh = forgery(refresh_jwt, secret)
            assert forged_access != tokens["access_token"] and forged_refresh != refresh_jwt
            await assert_forgery_refused(client, forged_access, forged_refresh)
            # The genuine session the forgery named is untouched: not ended, not renamed.
            profile = await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))
            assert profile.status_code == 200 and profile.json()["name"] == "Aline Uwase"
            assert (await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))).status_code == 200


async def assert_forgery_refused(client: Any, forged_access: str, forged_refresh: str) -> None:
    assert_refused(await client.get("/api/auth/profile", headers=bearer(forged_access)))
    assert_refused(await client.put("/api/auth/profile", headers=bearer(forged_access), json={"name": "Mallory"}))
    assert_refused(await client.get("/api/settings/account", headers=bearer(forged_access)))
    assert_refused(await client.post("/api/auth/refresh", headers=bearer(forged_refresh)))
    assert_refused(await client.post("/api/auth/refresh", json={"refresh_token": forged_refresh}))
    for forged in (forged_access, forged_refresh):
        assert_refused(await client.post("/api/auth/logout", headers=bearer(forged)))
        assert_refused(await client.post("/api/auth/logout", json={"refresh_token": forged}))


async def test_kid_and_jku_headers_do_not_choose_the_key(client: Any, settings: Settings) -> None:
    """Extra key-selection headers on a (legacy) token signed with our secret change nothing: it still works.

    ``kid`` is the one header that selects: among our own keys only, so a path or unknown name is refused.
    """
    assert settings.jwt_secret
    tokens = await signed_in(client)
    traversal = {**HS256, "kid": "../../../../dev/null"}
    assert_refused(
        await client.get(
            "/api/auth/profile",
            headers=bearer(encode(traversal, claims_of(tokens["access_token"]), settings.jwt_secret.encode())),
        )
    )
    header = {
        **HS256,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": {"kty": "oct", "k": b64(ATTACKER_KEY)},
    }
    decorated = encode(header, claims_of(tokens["access_token"]), settings.jwt_secret.encode())
    assert (await client.get("/api/auth/profile", headers=bearer(decorated))).status_code == 200
    # ...and the same headers cannot make the attacker's key acceptable.
    assert_refused(
        await client.get("/api/auth/profile", headers=bearer(encode(header, claims_of(decorated), ATTACKER_KEY)))
    )


async def test_genuine_expired_tokens(client: Any, settings: Settings) -> None:
    """Expired: refused as expired for use, yet still good for ending their own session (by design)."""
    assert settings.jwt_secret
    secret = settings.jwt_secret.encode()
    tokens = await signed_in(client)
    past = {"iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 60}
    expired_access = encode(HS256, {**claims_of(tokens["access_token"]), **past}, secret)
    expired_refresh = legacy_refresh_jwt(tokens["access_token"], secret, **past)
    expired = {"message": "Your session has expired. Please sign in again.", "code": "token_expired"}
    assert_refused(await client.get("/api/auth/profile", headers=bearer(expired_access)), expired)
    assert_refused(await client.post("/api/auth/refresh", headers=bearer(expired_refresh)), expired)
    assert_refused(await client.post("/api/auth/refresh", json={"refresh_token": expired_refresh}), expired)
    # Within the 5-second leeway a token still works: the leeway is not an hour.
    barely = encode(HS256, {**claims_of(tokens["access_token"]), "exp": now() - 2}, secret)
    assert (await client.get("/api/auth/profile", headers=bearer(barely))).status_code == 200

    assert (await client.post("/api/auth/logout", headers=bearer(expired_access))).status_code == 200
    assert_refused(await client.get("/api/auth/profile", headers=bearer(tokens["access_token"])))
    assert_refused(await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])))


async def test_refresh_token_is_no_access_token_and_the_reverse(client: Any) -> None:
    tokens = await signed_in(client)
    refresh, access = tokens["refresh_token"], tokens["access_token"]
    assert_refused(await client.get("/api/auth/profile", headers=bearer(refresh)))
    assert_refused(await client.put("/api/auth/profile", headers=bearer(refresh), json={"name": "Mallory"}))
    assert_refused(await client.get("/api/settings/account", headers=bearer(refresh)))
    assert_refused(await client.put("/api/settings/account", headers=bearer(refresh), json={"name": "Mallory"}))
    assert_refused(await client.post("/api/auth/refresh", headers=bearer(access)))
    assert_refused(await client.post("/api/auth/refresh", json={"refresh_token": access}))
    # Neither swap touched the session: both tokens still do their own job.
    assert (await client.get("/api/auth/profile", headers=bearer(access))).json()["name"] == "Aline Uwase"
    assert (await client.post("/api/auth/refresh", headers=bearer(refresh))).status_code == 200


async def test_deactivated_user_tokens_get_the_forged_token_answer(client: Any, db: Any) -> None:
    tokens = await signed_in(client)
    phone = (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).json()["phone_number"]
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", tokens["user_id"])
    access, refresh = bearer(tokens["access_token"]), tokens["refresh_token"]
    assert_refused(await client.get("/api/auth/profile", headers=access))
    assert_refused(await client.put("/api/auth/profile", headers=access, json={"name": "Still Here"}))
    assert_refused(await client.get("/api/settings/account", headers=access))
    assert_refused(await client.post("/api/auth/refresh", headers=bearer(refresh)))
    assert_refused(await client.post("/api/auth/refresh", json={"refresh_token": refresh}))
    login = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert login.status_code == 401 and login.json()["code"] == "invalid_credentials"
    assert await db.fetchval("SELECT name FROM users WHERE id = $1", tokens["user_id"]) == "Aline Uwase"
