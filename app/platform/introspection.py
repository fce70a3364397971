"""RFC 7662 token introspection: is this token one of ours, alive, and its session not ended?

Unlike a peer verifying the signature, this sees a logout, a revoked session, a deactivated account
or a replaced refresh token at once, because it reads the database.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.tokens import TokenClaims, TokenIssuer, token_digest
from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.db.models import RefreshToken, User

MAX_TOKEN_CHARS = 8192


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


def _claims(token: str, issuer: TokenIssuer) -> TokenClaims | None:
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    for kind in ("access", "refresh"):
        try:
            return issuer.decode(token, kind)
        except InvalidToken:
            continue
    return None


async def introspect(token: str, issuer: TokenIssuer, db_session: AsyncSession, settings: Settings) -> Introspection:
    claims = _claims(token, issuer)
    if claims is None:
        return INACTIVE
    session_ended = await db_session.scalar(
        select(exists().where(RefreshToken.family_id == claims.session_id, RefreshToken.revoked_at.is_not(None)))
    )
    active_user = await db_session.scalar(select(User.is_active).where(User.id == claims.user_id))
    if session_ended or not active_user:
        return INACTIVE
    if claims.type == "refresh" and not await _refresh_usable(token, claims, db_session, settings):
        return INACTIVE
    return Introspection(
        active=True,
        sub=str(claims.user_id),
        exp=int(claims.expires_at.timestamp()),
        iat=int(claims.issued_at.timestamp()),
        sid=str(claims.session_id),
        jti=str(claims.jti),
        token_type=claims.type,
        role=claims.role,
        iss=settings.jwt_issuer,
        aud=settings.jwt_audience,
    )


async def _refresh_usable(token: str, claims: TokenClaims, db_session: AsyncSession, settings: Settings) -> bool:
    """The refresh endpoint would take it: stored, not revoked, not replaced longer ago than the grace."""
    row = await db_session.scalar(select(RefreshToken).where(RefreshToken.jti == claims.jti))
    if row is None or row.token_hash != token_digest(token) or row.revoked_at is not None:
        return False
    if row.rotated_at is None:
        return True
    grace = datetime.timedelta(seconds=settings.refresh_reuse_grace_seconds)
    return datetime.datetime.now(datetime.UTC) - row.rotated_at <= grace


def audit_filters(result: Introspection) -> dict[str, Any]:
    """What the query log keeps of an introspection: whose token, never the token."""
    if not result.active:
        return {"active": False}
    return {"active": True, "user_id": result.sub, "token_type": result.token_type}
