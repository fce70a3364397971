"""The platform's side of the cut-over: our tokens verified by peers against the live JWKS.

One real API process (uvicorn). A minimal Flask app configured with flask-jwt-extended exactly as
docs/cutover.md says accepts our access tokens and refuses everything else; PyJWT's PyJWKClient
verifies against the same JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.core.settings import Settings
from app.db.config import sqlalchemy_config
from app.keys.keyring import KeyRing, read_keys
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    with api_server(settings, tmp_path_factory.mktemp("peer")) as base:
        yield base, settings


def sign_in(base: str) -> dict[str, Any]:
    phone = new_phone()
    body = {"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "adolescent"}
    answer = httpx.post(f"{base}/api/auth/register", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def platform_app(auth_url: str, issuer: str) -> Any:
    """The Flask platform's JWT set-up, as docs/cutover.md gives it (keep the two identical)."""
    from flask import Flask, jsonify
    from flask_jwt_extended import JWTManager, get_jwt_identity, jwt_required
    from jwt import PyJWKClient

    app = Flask(__name__)
    app.config.update(
        JWT_ALGORITHM="ES256",
        JWT_DECODE_ALGORITHMS=["ES256", "EdDSA"],
        JWT_DECODE_AUDIENCE="ladys-essence",
        JWT_DECODE_ISSUER=issuer,  # our issuer: its PUBLIC_URL
        JWT_IDENTITY_CLAIM="sub",
        JWT_TOKEN_LOCATION=["headers"],
    )
    jwks = PyJWKClient(f"{auth_url}/.well-known/jwks.json", cache_jwk_set=True, lifespan=60)
    manager = JWTManager(app)

    @manager.decode_key_loader
    def public_key_for(header: dict[str, Any], payload: dict[str, Any]) -> Any:
        try:
            return jwks.get_signing_key(header["kid"]).key
        except (KeyError, TypeError, jwt.PyJWKClientError) as exc:
            raise jwt.InvalidTokenError("unknown signing key") from exc

    @app.get("/api/cycle-logs")
    @jwt_required()
    def cycle_logs() -> Any:
        user_id = int(get_jwt_identity())  # "sub" is the user id as a string, e.g. "123"
        return jsonify(identity=get_jwt_identity(), user_id=user_id)

    return app


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return payload


def our_active_key(settings: Settings) -> Any:
    async def read() -> Any:
        engine = sqlalchemy_config(settings, pool=False).get_engine()
        try:
            return KeyRing(await read_keys(engine, settings), settings).signer()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_flask_jwt_extended_accepts_our_access_tokens_and_nothing_else(served: tuple[str, Settings]) -> None:
    base, settings = served
    tokens = sign_in(base)
    platform = platform_app(base, settings.jwt_issuer).test_client()

    accepted = platform.get("/api/cycle-logs", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert accepted.get_json() == {"identity": str(tokens["user_id"]), "user_id": tokens["user_id"]}

    key = our_active_key(settings)
    header = jwt.get_unverified_header(tokens["access_token"])
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    genuine = claims_of(tokens["access_token"])
    expired = jwt.encode(
        {**genuine, "iat": now - 7200, "nbf": now - 7200, "exp": now - 600},
        key.private_key,
        algorithm=key.alg,
        headers={"kid": key.kid},
    )
    impostor = jwt.encode(genuine, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=header)
    public_pem = key.verify_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused_header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64(json.dumps(confused_header).encode())}.{b64(json.dumps(genuine).encode())}"
    confused = f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
    refused = {
        "refresh token": tokens["refresh_token"],
        "expired": expired,
        "signed with another key": impostor,
        "HS256 with the public key as secret": confused,
        "no kid": jwt.encode(genuine, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
    }
    for why, token in refused.items():
        answer = platform.get("/api/cycle-logs", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code in (401, 422), (why, answer.status_code, answer.get_data(as_text=True))


def test_pyjwkclient_verifies_against_the_live_jwks(served: tuple[str, Settings]) -> None:
    base, settings = served
    tokens = sign_in(base)
    client = jwt.PyJWKClient(f"{base}/.well-known/jwks.json")
    signing_key = client.get_signing_key_from_jwt(tokens["access_token"])
    claims = jwt.decode(
        tokens["access_token"],
        signing_key.key,
        algorithms=[signing_key.algorithm_name],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    assert claims["sub"] == str(tokens["user_id"]) and claims["type"] == "access"
    with pytest.raises(jwt.PyJWTError):  # refresh tokens are opaque: no key of the JWKS verifies one
        client.get_signing_key_from_jwt(tokens["refresh_token"])
    with pytest.raises(jwt.PyJWKClientError):
        client.get_signing_key("no-such-kid")


# Stock verifiers as another team configures them: the published JWKS, the issuer and the audience,
# nothing of ours (no `type` check). Each answers the claims, or raises.
def verify_with_pyjwt(token: str, jwks_url: str, settings: Settings) -> dict[str, Any]:
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256", "EdDSA"], audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )
    return claims


def verify_with_authlib(token: str, jwks_url: str, settings: Settings) -> dict[str, Any]:
    from authlib.jose import JsonWebKey, JsonWebToken

    keys = JsonWebKey.import_key_set(httpx.get(jwks_url, timeout=10).json())
    options = {
        "iss": {"essential": True, "value": settings.jwt_issuer},
        "aud": {"essential": True, "value": settings.jwt_audience},
    }
    claims = JsonWebToken(["ES256", "EdDSA"]).decode(token, keys, claims_options=options)
    claims.validate()
    return dict(claims)


def verify_with_joserfc(token: str, jwks_url: str, settings: Settings) -> dict[str, Any]:
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(httpx.get(jwks_url, timeout=10).json())
    decoded = jose_jwt.decode(token, keys, algorithms=["ES256", "EdDSA"])
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": settings.jwt_issuer}, aud={"essential": True, "value": settings.jwt_audience}
    ).validate(decoded.claims)
    return dict(decoded.claims)


STOCK_VERIFIERS = {"pyjwt": verify_with_pyjwt, "authlib": verify_with_authlib, "joserfc": verify_with_joserfc}


@pytest.mark.parametrize("verifier", list(STOCK_VERIFIERS))
def test_stock_verifiers_take_access_tokens_and_no_refresh_token(served: tuple[str, Settings], verifier: str) -> None:
    """Issue 21, finding 5: refresh tokens passed as access tokens at every stock verifier, for 30 days."""
    base, settings = served
    verify = STOCK_VERIFIERS[verifier]
    jwks_url = f"{base}/.well-known/jwks.json"
    tokens = sign_in(base)
    claims = verify(tokens["access_token"], jwks_url, settings)
    assert claims["sub"] == str(tokens["user_id"])
    rotated = httpx.post(f"{base}/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, timeout=30)
    assert rotated.status_code == 200, rotated.text
    logged_out = httpx.post(
        f"{base}/api/auth/logout", headers={"Authorization": f"Bearer {rotated.json()['access_token']}"}, timeout=30
    )
    assert logged_out.status_code == 200, logged_out.text
    for which, refresh in {
        "issued": tokens["refresh_token"],
        "rotated, logged out": rotated.json()["refresh_token"],
    }.items():
        with pytest.raises(Exception) as refused:
            verify(refresh, jwks_url, settings)
        assert not isinstance(refused.value, AssertionError), which
