"""Dependencies of signed-in routes: the session service, the access token's claims, the signed-in user.

Public routes never look at ``Authorization`` (the clients in the field send a stale one
everywhere); only routes that ask for ``current_user`` or ``access_claims`` read it.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidToken, NotAuthenticated
from app.core.http import user_agent_of
from app.core.logs import USER_ID_STATE_KEY
from app.db.models import User
from app.sessions.direct import SessionChecks
from app.sessions.service import ClientUse, SessionService
from app.sessions.tokens import TokenClaims, TokenIssuer


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def client_use(request: Request[Any, Any, Any], state: State) -> ClientUse:
    """Where this request comes from, as a session's last use records it."""
    address = state.client_resolver.address_of(request.scope)
    return ClientUse(
        ip_address=str(address) if address is not None else None,
        user_agent=user_agent_of(request.headers.get("user-agent")),
    )


async def provide_session_service(db_session: NamedDependency[AsyncSession], state: State) -> SessionService:
    return SessionService(db_session, state.token_issuer, state.settings)


async def provide_access_claims(request: Request[Any, Any, Any], state: State) -> TokenClaims:
    token = bearer_token(request)
    if token is None:
        raise NotAuthenticated()
    issuer: TokenIssuer = state.token_issuer
    claims = issuer.decode_access(token)
    request.scope["state"][USER_ID_STATE_KEY] = claims.user_id  # for the access log
    return claims


async def provide_current_user(
    access_claims: NamedDependency[TokenClaims], session_service: NamedDependency[SessionService]
) -> User:
    """The signed-in user: the session is live and the account active, read now (not from the token)."""
    user = await session_service.signed_in_user(access_claims.user_id, access_claims.session_id)
    if user is None:
        raise InvalidToken()
    return user


async def provide_signed_in(request: Request[Any, Any, Any], state: State) -> User:
    """The signed-in user for routes that only read it: the same checks as ``current_user``, one
    prepared statement and no ORM session (app/sessions/direct.py); the ``User`` is detached."""
    token = bearer_token(request)
    if token is None:
        raise NotAuthenticated()
    issuer: TokenIssuer = state.token_issuer
    claims = issuer.decode_access(token)
    request.scope["state"][USER_ID_STATE_KEY] = claims.user_id  # for the access log
    checks: SessionChecks = state.session_checks
    user = await checks.signed_in_user(claims.user_id, claims.session_id)
    if user is None:
        raise InvalidToken()
    return user


SESSION_DEPENDENCIES = {
    "session_service": Provide(provide_session_service),
    "access_claims": Provide(provide_access_claims),
    "current_user": Provide(provide_current_user),
    "signed_in": Provide(provide_signed_in),
}
