"""The session's credentials: access tokens (JWTs, RFC 9068 profile) and refresh tokens (opaque).

Access tokens are signed with the key set's active key (app/keys) and carry the header ``typ:
at+jwt`` (RFC 9068), ``kid``, and the claims ``sub``, ``sid`` (the session), ``jti``, ``iat``,
``nbf``, ``exp``, ``iss``, ``aud``, ``role``, ``auth_time`` (when the session's password or PIN
sign-in happened, kept across refreshes), ``client_id`` (the platform's own apps), ``scope`` (from
the account's authority: app/authority.py) and ``type: access`` (what the Flask-era peers check).
Tokens carrying the issuer string of before the issuer became a URL verify while
JWT_ACCEPT_LEGACY_ISSUER is on.

Refresh tokens are random secrets (256 bits, ``rt_`` + base64url), stored only as SHA-256: no key
that the JWKS publishes verifies one, so no peer can mistake one for an access token. Refresh JWTs
issued before the switch (``type: refresh``, ES256 or, while JWT_ACCEPT_LEGACY_HS256 is on, the
Flask-era HS256) are still read until they expire: :meth:`TokenIssuer.decode_legacy_refresh`.

A token without ``kid`` is one signed with JWT_SECRET (HS256) before the switch to signing keys; the
key, never the token's ``alg`` header, says which algorithm verifies a token.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import msgspec
import uuid_utils
from jwt.algorithms import get_default_algorithms

from app.authority import authority_of, scopes_of
from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.keys.keyring import KeyRing

TokenType = Literal["access", "refresh"]
LEGACY_ALGORITHM = "HS256"
ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type, not a secret
REQUIRED_CLAIMS = ["sub", "type", "jti", "iat", "exp", "iss", "aud", "sid"]
REFRESH_TOKEN_PREFIX = "rt_"  # noqa: S105 - a marker, not a secret
REFRESH_TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 8192
FIRST_PARTY_CLIENT_ID = "ladys-essence-app"  # the `client_id` of tokens from sign-in (web, app, USSD)


@functools.lru_cache(maxsize=64)  # a handful of (role, user_type) pairs exist; worked out per token issued
def user_scope(role: str, user_type: str | None) -> str:
    """The ``scope`` claim of an account's access tokens; ``user_type`` None: the role alone decides."""
    return " ".join(scopes_of(authority_of(role, user_type or "")))


_ALGORITHMS = get_default_algorithms()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


LEEWAY_SECONDS = 5
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    type: TokenType
    jti: uuid.UUID
    session_id: uuid.UUID
    role: str
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    auth_time: datetime.datetime | None = None  # None: a token from before the claim existed


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: TokenClaims


def token_digest(token: str) -> str:
    """What the database keeps of a refresh token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token() -> str:
    """An opaque refresh token: 256 random bits that mean nothing to anyone but this service."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def is_opaque_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_TOKEN_PREFIX) and "." not in token


class TokenIssuer:
    def __init__(self, settings: Settings, keys: KeyRing) -> None:
        self._keys = keys
        self._legacy_secret = settings.jwt_secret if settings.jwt_accept_legacy_hs256 else None
        self._issuer = settings.jwt_issuer
        self._accepted_issuers = settings.accepted_issuers
        self._audience = settings.jwt_audience
        self.access_lifetime = datetime.timedelta(minutes=settings.access_token_minutes)
        self.refresh_lifetime = datetime.timedelta(days=settings.refresh_token_days)
        # Access tokens already verified, by the whole token (signature included): a client sends
        # the same one on every request until it expires. An entry is used only while its key is
        # still in the key ring and the token unexpired; revocation is the session's check, not this.
        self._verified: dict[str, tuple[TokenClaims, str | None]] = {}
        self._headers: dict[str, bytes] = {}  # the encoded JWS header of each signing key

    def issue_access(
        self,
        *,
        user_id: int,
        role: str,
        session_id: uuid.UUID,
        auth_time: datetime.datetime | None,
        user_type: str | None = None,
    ) -> IssuedToken:
        """``auth_time``: the session's sign-in (a refresh passes the session's); None leaves the claim out.

        ``user_type`` with ``role`` gives the ``scope`` (the Flask-era panel account is support).
        """
        now = datetime.datetime.now(datetime.UTC)
        claims = TokenClaims(
            user_id=user_id,
            type="access",
            jti=uuid.UUID(bytes=uuid_utils.uuid4().bytes),  # the os.urandom call of uuid.uuid4 cost more
            session_id=session_id,
            role=role,
            issued_at=now,
            expires_at=now + self.access_lifetime,
            auth_time=auth_time,
        )
        payload: dict[str, object] = {
            "sub": str(user_id),
            "type": "access",
            "jti": str(claims.jti),
            "sid": str(session_id),
            "role": role,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "iss": self._issuer,
            "aud": self._audience,
            "client_id": FIRST_PARTY_CLIENT_ID,
            "scope": user_scope(role, user_type),
        }
        if auth_time is not None:
            payload["auth_time"] = int(auth_time.timestamp())
        key = self._keys.signer()
        assert key.private_key is not None, "the signer is a key with its private half"
        return IssuedToken(self._sign(payload, key.kid, key.alg, key.private_key), claims)

    def _sign(self, payload: dict[str, object], kid: str, alg: str, private_key: Any) -> str:
        """The compact JWS of ``payload``: PyJWT's algorithm signs; the two encoded parts around it are
        put together here, the header once per key. ``jwt.encode`` did the same with a generic JSON
        encoder and the header rebuilt each time, which took half again the time of the signature."""
        header = self._headers.get(kid)
        if header is None:
            header = _b64(json.dumps({"alg": alg, "kid": kid, "typ": ACCESS_TOKEN_TYP}, separators=(",", ":")).encode())
            self._headers[kid] = header
        signing_input = header + b"." + _b64(msgspec.json.encode(payload))
        signature = _ALGORITHMS[alg].sign(signing_input, private_key)
        return (signing_input + b"." + _b64(signature)).decode("ascii")

    def _verification_key(self, token: str) -> tuple[Any, str]:
        """The key and the one algorithm for this token, chosen by its ``kid`` alone."""
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            if self._legacy_secret is None:
                raise InvalidToken()
            return self._legacy_secret, LEGACY_ALGORITHM
        key = self._keys.verifier(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken()
        return key.verify_key, key.alg

    def decode(self, token: str, expected: TokenType, *, allow_expired: bool = False) -> TokenClaims:
        """Verify signature, issuer, audience, lifetime and type; anything off is InvalidToken."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken()
        try:
            key, algorithm = self._verification_key(token)
            payload = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._accepted_issuers,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS, "verify_exp": not allow_expired},
            )
            claims = TokenClaims(
                user_id=int(payload["sub"]),
                type=payload["type"],
                jti=uuid.UUID(payload["jti"]),
                session_id=uuid.UUID(payload["sid"]),
                role=str(payload.get("role", "user")),
                issued_at=datetime.datetime.fromtimestamp(payload["iat"], datetime.UTC),
                expires_at=datetime.datetime.fromtimestamp(payload["exp"], datetime.UTC),
                auth_time=(
                    datetime.datetime.fromtimestamp(payload["auth_time"], datetime.UTC)
                    if "auth_time" in payload
                    else None
                ),
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("Your session has expired. Please sign in again.", code="token_expired") from exc
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError) as exc:
            raise InvalidToken() from exc
        if claims.type != expected:
            raise InvalidToken()
        return claims

    def decode_access(self, token: str, *, allow_expired: bool = False) -> TokenClaims:
        cached = self._verified.get(token)
        if cached is not None:
            claims, kid = cached
            still_trusted = self._legacy_secret is not None if kid is None else self._keys.verifier(kid) is not None
            leeway = datetime.timedelta(seconds=LEEWAY_SECONDS)
            if still_trusted and (allow_expired or claims.expires_at + leeway > datetime.datetime.now(datetime.UTC)):
                return claims
            del self._verified[token]
        claims = self.decode(token, "access", allow_expired=allow_expired)
        if claims.expires_at > datetime.datetime.now(datetime.UTC):
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest entry
            kid = jwt.get_unverified_header(token).get("kid")
            self._verified[token] = (claims, kid if isinstance(kid, str) else None)
        return claims

    def decode_legacy_refresh(self, token: str, *, allow_expired: bool = False) -> TokenClaims:
        """A refresh JWT issued before refresh tokens became opaque; read until it expires."""
        return self.decode(token, "refresh", allow_expired=allow_expired)
