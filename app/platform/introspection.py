"""RFC 7662 token introspection: is this token one of ours, alive, and its session not ended?

Unlike a peer verifying the signature, this sees a logout, a revoked session, a deactivated account
or a replaced refresh token at once, because it reads the database.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.db.models import User
from app.sessions.service import SessionService
from app.sessions.tokens import MAX_TOKEN_CHARS, TokenClaims, TokenIssuer


class Introspection(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``active`` always; the rest only for an active token (RFC 7662 section 2.2)."""

    active: bool
    sub: str | UnsetType = UNSET
    exp: int | UnsetType = UNSET
    iat: int | UnsetType = UNSET
    sid: str | UnsetType = UNSET
    jti: str | UnsetType = UNSET
    token_type: str | UnsetType = UNSET  # access | refresh (our `type` claim)
    role: str | UnsetType = UNSET
    iss: str | UnsetType = UNSET
    aud: str | UnsetType = UNSET


INACTIVE = Introspection(active=False)


def _access_claims(token: str, issuer: TokenIssuer) -> TokenClaims | None:
    try:
        return issuer.decode_access(token)
    except InvalidToken:
        return None


async def introspect(token: str, issuer: TokenIssuer, db_session: AsyncSession, settings: Settings) -> Introspection:
    """Active when the refresh endpoint, or a signed-in route, would take the token right now."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return INACTIVE
    sessions = SessionService(db_session, issuer, settings)
    claims = _access_claims(token, issuer)
    if claims is not None:
        if await sessions.signed_in_user(claims.user_id, claims.session_id) is None:
            return INACTIVE
        return _active(
            claims.user_id,
            claims.session_id,
            claims.jti,
            claims.issued_at,
            claims.expires_at,
            "access",
            claims.role,
            settings,
        )
    found = await sessions.owner_of_refresh_token(token)
    if found is None:
        return INACTIVE
    row, session = found
    role = await db_session.scalar(select(User.role).where(User.id == session.user_id, User.is_active.is_(True)))
    if role is None:
        return INACTIVE
    return _active(session.user_id, session.id, row.jti, row.created_at, row.expires_at, "refresh", role, settings)


def _active(
    user_id: int,
    session_id: uuid.UUID,
    jti: uuid.UUID,
    issued_at: datetime.datetime,
    expires_at: datetime.datetime,
    token_type: str,
    role: str,
    settings: Settings,
) -> Introspection:
    return Introspection(
        active=True,
        sub=str(user_id),
        exp=int(expires_at.timestamp()),
        iat=int(issued_at.timestamp()),
        sid=str(session_id),
        jti=str(jti),
        token_type=token_type,
        role=role,
        iss=settings.jwt_issuer,
        aud=settings.jwt_audience,
    )


def audit_filters(result: Introspection) -> dict[str, Any]:
    """What the query log keeps of an introspection: whose token, never the token."""
    if not result.active:
        return {"active": False}
    return {"active": True, "user_id": result.sub, "token_type": result.token_type}
