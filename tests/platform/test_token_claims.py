"""RFC 9068 access-token claims, the scope table of docs/authority.md, and the old issuer's transition window."""

from __future__ import annotations

import datetime
import uuid

import jwt
import msgspec
import pytest

from app.core.errors import InvalidToken
from app.core.settings import LEGACY_ISSUER, Settings
from app.keys.keyring import KeyRing, LoadedKey
from app.keys.material import generate
from app.sessions.tokens import TokenIssuer

ISSUER = "https://auth.example.org"
SETTINGS = Settings.from_env(
    {}, public_url=ISSUER, jwt_secret="s" * 40, pin_pepper="p" * 40, signing_keys_secret="k" * 40, app_env="test"
)


def key_ring(settings: Settings) -> tuple[KeyRing, LoadedKey]:
    material = generate("ES256")
    now = datetime.datetime.now(datetime.UTC)
    key = LoadedKey(
        kid=material.kid,
        alg="ES256",
        public_jwk=material.public_jwk,
        verify_key=material.private_key.public_key(),
        private_key=material.private_key,
        created_at=now - datetime.timedelta(hours=1),
        activates_at=now - datetime.timedelta(minutes=30),
        retired_at=None,
    )
    return KeyRing([key], settings), key


def test_access_tokens_carry_the_rfc_9068_claims() -> None:
    ring, key = key_ring(SETTINGS)
    signed_in = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(minutes=3)
    issued = TokenIssuer(SETTINGS, ring).issue_access(
        user_id=42, role="user", user_type="adolescent", session_id=uuid.uuid4(), auth_time=signed_in
    )
    assert jwt.get_unverified_header(issued.token)["typ"] == "at+jwt"
    claims = jwt.decode(issued.token, key.verify_key, algorithms=["ES256"], audience="ladys-essence", issuer=ISSUER)
    rfc_9068 = {"iss", "exp", "aud", "sub", "client_id", "iat", "jti", "scope", "auth_time"}
    assert rfc_9068 <= claims.keys()
    assert claims["sub"] == "42" and claims["client_id"] == "ladys-essence-app" and claims["scope"] == "account"
    assert claims["auth_time"] == int(signed_in.timestamp())
    assert claims["type"] == "access" and claims["role"] == "user" and claims["sid"]  # kept for the Flask-era peers


@pytest.mark.parametrize(
    ("role", "user_type", "scope"),
    [
        ("user", "adolescent", {"account"}),
        ("user", "parent", {"account"}),
        ("user", "admin", {"account", "panel"}),  # the Flask-era panel account: support
        ("security", "parent", {"account", "audit"}),
        ("security", "admin", {"account", "audit"}),  # a role wins over the user type
        ("admin", "parent", {"account", "panel", "audit", "audit_usage"}),
    ],
)
def test_scope_follows_the_authority_table(role: str, user_type: str, scope: set[str]) -> None:
    """The table in docs/authority.md, written out here rather than read from the code."""
    ring, key = key_ring(SETTINGS)
    token = TokenIssuer(SETTINGS, ring).issue_access(
        user_id=1, role=role, user_type=user_type, session_id=uuid.uuid4(), auth_time=None
    )
    claims = jwt.decode(token.token, key.verify_key, algorithms=["ES256"], audience="ladys-essence")
    assert set(claims["scope"].split(" ")) == scope


def legacy_issuer_token(key: LoadedKey) -> str:
    now = datetime.datetime.now(datetime.UTC)
    payload = {
        "sub": "5",
        "type": "access",
        "jti": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "role": "user",
        "iat": now,
        "exp": now + datetime.timedelta(minutes=5),
        "iss": LEGACY_ISSUER,
        "aud": "ladys-essence",
    }
    return jwt.encode(payload, key.private_key, algorithm="ES256", headers={"kid": key.kid})


def test_the_old_issuer_verifies_only_during_the_transition_window() -> None:
    ring, key = key_ring(SETTINGS)
    token = legacy_issuer_token(key)
    assert TokenIssuer(SETTINGS, ring).decode_access(token).user_id == 5

    closed = msgspec.structs.replace(SETTINGS, jwt_accept_legacy_issuer=False)
    with pytest.raises(InvalidToken):
        TokenIssuer(closed, KeyRing([key], closed)).decode_access(token)
    foreign = jwt.encode(
        {**jwt.decode(token, options={"verify_signature": False}), "iss": "https://elsewhere.example"},
        key.private_key,
        algorithm="ES256",
        headers={"kid": key.kid},
    )
    with pytest.raises(InvalidToken):
        TokenIssuer(SETTINGS, ring).decode_access(foreign)
