"""Dependencies of the auth routes: the services, and the signed-in user of protected routes.

Public routes never look at ``Authorization`` (the clients in the field send a stale one
everywhere); only routes that ask for ``current_user`` or ``bearer_claims`` read it.
"""

from __future__ import annotations

from typing import Any

from advanced_alchemy.extensions.litestar.providers import create_service_provider
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from app.accounts.service import AuthService, RefreshTokenService, UserService
from app.accounts.tokens import TokenClaims, TokenIssuer
from app.core.errors import NotAuthenticated
from app.db.models import User


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def provide_auth_service(
    users_service: NamedDependency[UserService], tokens_service: NamedDependency[RefreshTokenService], state: State
) -> AuthService:
    return AuthService(users_service, tokens_service, state.hasher, state.token_issuer, state.settings)


async def provide_access_claims(request: Request[Any, Any, Any], state: State) -> TokenClaims:
    token = bearer_token(request)
    if token is None:
        raise NotAuthenticated()
    issuer: TokenIssuer = state.token_issuer
    return issuer.decode(token, "access")


async def provide_current_user(
    access_claims: NamedDependency[TokenClaims], auth_service: NamedDependency[AuthService]
) -> User:
    return await auth_service.user_for_access_token(access_claims)


AUTH_DEPENDENCIES = {
    "users_service": Provide(create_service_provider(UserService)),
    "tokens_service": Provide(create_service_provider(RefreshTokenService)),
    "auth_service": Provide(provide_auth_service),
    "access_claims": Provide(provide_access_claims),
    "current_user": Provide(provide_current_user),
}
