"""HTTP side of the accounts API (register, profile): the Flask-era paths and JSON shapes."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Dependency, JSONBody

from app.accounts.forms import clean_profile_update, clean_registration
from app.accounts.identifiers import IdentifierChanges
from app.accounts.reauth import Reauthentication, RequestOrigin
from app.accounts.schemas import AuthResponse, ProfileResponse, ProfileUpdateRequest, RegisterRequest
from app.accounts.service import AuthService
from app.core.errors import LimiterUnavailable, RateLimited, error_responses, try_again_in
from app.core.http import BODY_ERRORS
from app.core.openapi import SIGNED_IN, per_path
from app.db.models import User
from app.ratelimit.limiter import Decision, LoginLimiter, rate_limit_headers
from app.sessions.deps import client_use
from app.sessions.tokens import TokenClaims


def request_origin(request: Request[Any, Any, Any], state: State) -> RequestOrigin:
    use = client_use(request, state)
    return RequestOrigin(
        ip_address=use.ip_address,
        user_agent=use.user_agent,
        request_id=(request.headers.get("x-request-id") or "")[:64] or None,
    )


async def take_register_budget(limiter: LoginLimiter, client_key: str, state: State) -> Decision | None:
    """Registrations per client per hour; every attempt counts."""
    try:
        decision = await limiter.hit_register(client_key)
    except LimiterUnavailable:
        if state.settings.rate_limit_fail_open:
            return None
        raise LimiterUnavailable(
            message="Registration is temporarily unavailable. Please try again in a minute."
        ) from None
    if not decision.allowed:
        raise RateLimited(
            f"Too many registrations from this network. {try_again_in(decision.retry_after)}",
            headers={"Retry-After": str(decision.retry_after), **rate_limit_headers("register", decision)},
            extra={"retry_after": decision.retry_after},
        )
    return decision


class AuthController(Controller):
    """Registration, sessions and the profile; ``/api/settings/account`` is the profile as the settings page uses it."""

    path = "/api"
    tags = ["auth"]

    @post(
        "/auth/register",
        status_code=201,
        summary="Create an account and sign in",
        responses=error_responses(*BODY_ERRORS, 409, 429, 503, s503="Rate limiter unavailable (fails closed)"),
    )
    async def register(
        self,
        data: JSONBody[RegisterRequest],
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[AuthResponse]:
        address = state.client_resolver.address_of(request.scope)
        decision = await take_register_budget(state.limiter, state.client_resolver.client_key(address), state)
        headers = rate_limit_headers("register", decision) if decision else {}
        account = clean_registration(data, state.settings.default_phone_region)
        sign_in = await auth_service.register(account, client_use(request, state))
        body = AuthResponse.of(sign_in, "Registration successful", pin_enabled=sign_in.user.enable_pin_auth)
        return Response(body, status_code=201, headers=headers)

    @get(
        ["/auth/profile", "/settings/account"],
        summary="The signed-in user's profile (also the settings page's account settings)",
        responses=error_responses(401),
        security=SIGNED_IN,
        operation_id=per_path({"/api/auth/profile": "getProfile", "/api/settings/account": "getAccountSettings"}),
    )
    async def get_profile(
        self,
        request: Request[Any, Any, Any],
        signed_in: Annotated[User, Dependency(skip_validation=True)],  # a snapshot with User's attributes
    ) -> ProfileResponse:
        settings_page = request.url.path.startswith("/api/settings/")
        return ProfileResponse.of_user(
            signed_in, "Account settings retrieved" if settings_page else "Profile retrieved"
        )

    @put(
        ["/auth/profile", "/settings/account"],
        summary="Change the profile; PIN, password, phone, email or PIN sign-in changes need a recent sign-in "
        "or current_password",
        responses=error_responses(
            *BODY_ERRORS,
            401,
            403,
            409,
            429,
            s403="reauthentication_required: sign in again, or send current_password",
            s429="A wrong current_password spent the number's password budget (account_locked), or too many "
            "email / phone number changes (PROFILE_IDENTIFIER_CHANGES per hour)",
        ),
        security=SIGNED_IN,
        operation_id=per_path({"/api/auth/profile": "updateProfile", "/api/settings/account": "updateAccountSettings"}),
    )
    async def update_profile(
        self,
        data: JSONBody[ProfileUpdateRequest],
        request: Request[Any, Any, Any],
        current_user: NamedDependency[User],
        access_claims: NamedDependency[TokenClaims],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> ProfileResponse:
        changes = clean_profile_update(data, current_user, state.settings.default_phone_region)
        origin = request_origin(request, state)
        reauth = Reauthentication(state.limiter, state.audit_publisher, state.hasher, state.settings)
        await reauth.confirm(current_user, access_claims, changes, origin)
        identifiers = IdentifierChanges(
            state.limiter, state.audit_publisher, fail_open=state.settings.rate_limit_fail_open
        )
        async with identifiers.attempt(current_user, changes, origin):
            ended_others = await auth_service.update_profile(current_user, changes, access_claims.session_id)
        if ended_others:
            return ProfileResponse.of_user(current_user, "Profile updated. You were signed out on your other devices.")
        return ProfileResponse.of_user(current_user, "Profile updated successfully")
