"""RFC 7662 token introspection: is this token one of ours, alive, and its session not ended?

Unlike a peer verifying the signature, this sees a logout, a revoked session, a deactivated account
or a replaced refresh token at once, because it reads the database. A service's access token (from
``POST /oauth/token``) is active while it has not expired and its credential is not revoked.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.db.models import User
from app.keys.keyring import KeyRing
from app.platform.credentials import scopes_of_issuer
from app.platform.service_tokens import ServiceToken, decode_service_token
from app.sessions.service import SessionService
from app.sessions.tokens import FIRST_PARTY_CLIENT_ID, MAX_TOKEN_CHARS, TokenClaims, TokenIssuer, user_scope

BEARER = "Bearer"  # RFC 6749 section 7.1: the token_type of an access token
REFRESH_TOKEN_TYPE = "refresh_token"  # noqa: S105 - RFC 7662's name for the kind, not a secret
TokenTypeHint = Literal["access_token", "refresh_token"]


class Introspection(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``active`` always; the rest only for an active token (RFC 7662 section 2.2).

    ``token_type``: ``Bearer`` for an access token, ``refresh_token`` for a refresh token; ``type``
    says ``access`` / ``refresh`` / ``service`` as the tokens' own claim does; ``username``: the
    account's phone number (its sign-in name), else its email.
    """

    active: bool
    scope: str | UnsetType = UNSET
    client_id: str | UnsetType = UNSET
    username: str | UnsetType = UNSET
    token_type: str | UnsetType = UNSET
    exp: int | UnsetType = UNSET
    iat: int | UnsetType = UNSET
    nbf: int | UnsetType = UNSET
    sub: str | UnsetType = UNSET
    aud: str | UnsetType = UNSET
    iss: str | UnsetType = UNSET
    jti: str | UnsetType = UNSET
    sid: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    role: str | UnsetType = UNSET


INACTIVE = Introspection(active=False)


def _access_claims(token: str, issuer: TokenIssuer) -> TokenClaims | None:
    try:
        return issuer.decode_access(token)
    except InvalidToken:
        return None


async def introspect(
    token: str,
    issuer: TokenIssuer,
    keys: KeyRing,
    db_session: AsyncSession,
    settings: Settings,
    hint: TokenTypeHint | None = None,
) -> Introspection:
    """Active when the refresh endpoint, a signed-in route or an internal route would take the token now.

    ``hint`` says which kind to look for first (RFC 7662: the others are still tried).
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return INACTIVE
    lookups = [_as_access_token, _as_service_token, _as_refresh_token]
    if hint == "refresh_token":
        lookups.insert(0, lookups.pop())
    for lookup in lookups:
        found = await lookup(token, issuer, keys, db_session, settings)
        if found is not None:
            return found
    return INACTIVE


async def _as_access_token(
    token: str, issuer: TokenIssuer, keys: KeyRing, db_session: AsyncSession, settings: Settings
) -> Introspection | None:
    claims = _access_claims(token, issuer)
    if claims is None:
        return None
    user = await SessionService(db_session, issuer, settings).signed_in_user(claims.user_id, claims.session_id)
    if user is None:
        return INACTIVE
    return _active(user, claims.session_id, claims.jti, claims.issued_at, claims.expires_at, "access", settings)


async def _as_refresh_token(
    token: str, issuer: TokenIssuer, keys: KeyRing, db_session: AsyncSession, settings: Settings
) -> Introspection | None:
    found = await SessionService(db_session, issuer, settings).owner_of_refresh_token(token)
    if found is None:
        return None
    row, session = found
    user = await db_session.scalar(select(User).where(User.id == session.user_id, User.is_active.is_(True)))
    if user is None:
        return INACTIVE
    return _active(user, session.id, row.jti, row.created_at, row.expires_at, "refresh", settings)


async def _as_service_token(
    token: str, issuer: TokenIssuer, keys: KeyRing, db_session: AsyncSession, settings: Settings
) -> Introspection | None:
    service = decode_service_token(keys, settings, token)
    if service is None:
        return None
    live = await scopes_of_issuer(db_session, service)
    return INACTIVE if live is None else _active_service(service, settings)


def _active(
    user: User,
    session_id: uuid.UUID,
    jti: uuid.UUID,
    issued_at: datetime.datetime,
    expires_at: datetime.datetime,
    kind: Literal["access", "refresh"],
    settings: Settings,
) -> Introspection:
    username = user.phone_number or user.email
    return Introspection(
        active=True,
        scope=user_scope(user.role, user.user_type),
        client_id=FIRST_PARTY_CLIENT_ID,
        username=username if username else UNSET,
        token_type=BEARER if kind == "access" else REFRESH_TOKEN_TYPE,
        exp=int(expires_at.timestamp()),
        iat=int(issued_at.timestamp()),
        nbf=int(issued_at.timestamp()) if kind == "access" else UNSET,
        sub=str(user.id),
        aud=settings.jwt_audience,
        iss=settings.jwt_issuer,
        jti=str(jti),
        sid=str(session_id),
        type=kind,
        role=user.role,
    )


def _active_service(service: ServiceToken, settings: Settings) -> Introspection:
    return Introspection(
        active=True,
        scope=service.scope,
        client_id=service.client_id,
        token_type=BEARER,
        exp=service.expires_at,
        iat=service.issued_at,
        nbf=service.issued_at,
        sub=service.client_id,
        aud=settings.jwt_issuer,
        iss=settings.jwt_issuer,
        jti=service.jti,
        type="service",
    )


def audit_filters(result: Introspection) -> dict[str, Any]:
    """What the query log keeps of an introspection: whose token, never the token."""
    if not result.active:
        return {"active": False}
    if result.type == "service":
        return {"active": True, "client_id": result.client_id, "token_type": "service"}
    return {"active": True, "user_id": result.sub, "token_type": result.type}
