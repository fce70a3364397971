"""Dependencies of the accounts routes: the services (the signed-in user comes from app/sessions/deps.py)."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar.providers import create_service_provider
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from app.accounts.service import AuthService, UserService
from app.sessions.deps import SESSION_DEPENDENCIES
from app.sessions.service import SessionService


async def provide_auth_service(
    users_service: NamedDependency[UserService], session_service: NamedDependency[SessionService], state: State
) -> AuthService:
    checks = state.session_checks
    return AuthService(
        users_service, session_service, state.hasher, state.token_issuer, state.settings, checks.account_by_phone
    )


AUTH_DEPENDENCIES = {
    **SESSION_DEPENDENCIES,
    "users_service": Provide(create_service_provider(UserService)),
    "auth_service": Provide(provide_auth_service),
}
