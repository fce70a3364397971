"""Access tokens for services (RFC 6749 section 4.4, client credentials; RFC 9068 claims).

``POST /oauth/token`` exchanges a service credential for a short-lived JWT signed with the same keys
as users' tokens. Its audience is this service's issuer, not the platform audience users' tokens
carry, and it has no ``sid`` and ``type: service``: a peer that accepts users' tokens refuses it, and
this service's user routes do too. The internal routes take it as they take the ``les_`` token.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

import jwt

from app.core.settings import Settings
from app.keys.keyring import KeyRing
from app.sessions.tokens import ACCESS_TOKEN_TYP, MAX_TOKEN_CHARS

SERVICE_TOKEN_TYPE = "service"  # noqa: S105 - the `type` claim, not a secret
# ``credential_id``: the credential's row, so a token of a revoked credential stays dead when its name
# is given a new one.
REQUIRED_CLAIMS = ["sub", "client_id", "credential_id", "scope", "type", "jti", "iat", "exp", "iss", "aud"]


@dataclass(frozen=True, slots=True)
class ServiceToken:
    client_id: str
    credential_id: int
    scopes: frozenset[str]
    expires_at: int
    issued_at: int
    jti: str
    token: str = ""

    @property
    def scope(self) -> str:
        return " ".join(sorted(self.scopes))


def issue_service_token(
    keys: KeyRing, settings: Settings, client_id: str, credential_id: int, scopes: list[str]
) -> ServiceToken:
    now = datetime.datetime.now(datetime.UTC)
    lifetime = settings.client_credentials_token_seconds
    jti = str(uuid.uuid4())
    payload = {
        "iss": settings.jwt_issuer,
        "sub": client_id,
        "aud": settings.jwt_issuer,
        "client_id": client_id,
        "credential_id": credential_id,
        "scope": " ".join(sorted(scopes)),
        "type": SERVICE_TOKEN_TYPE,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + datetime.timedelta(seconds=lifetime),
    }
    key = keys.signer()
    assert key.private_key is not None, "the signer is a key with its private half"
    token = jwt.encode(payload, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYP})
    issued_at = int(now.timestamp())
    return ServiceToken(client_id, credential_id, frozenset(scopes), issued_at + lifetime, issued_at, jti, token)


def decode_service_token(keys: KeyRing, settings: Settings, token: str) -> ServiceToken | None:
    """The service and scopes of a live service token; None for anything else (a user's token too)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = keys.verifier(kid) if isinstance(kid, str) else None
        if key is None:
            return None
        payload = jwt.decode(
            token,
            key.verify_key,
            algorithms=[key.alg],
            audience=settings.jwt_issuer,
            issuer=settings.jwt_issuer,
            leeway=5,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError:
        return None
    if payload["type"] != SERVICE_TOKEN_TYPE or not isinstance(payload["scope"], str):
        return None
    if not isinstance(payload["client_id"], str) or payload["client_id"] != payload["sub"]:
        return None
    if type(payload["credential_id"]) is not int:
        return None
    return ServiceToken(
        payload["client_id"],
        payload["credential_id"],
        frozenset(payload["scope"].split()),
        int(payload["exp"]),
        int(payload["iat"]),
        payload["jti"],
    )
