"""HTTP side of the accounts API (register, refresh, logout, profile): the Flask-era paths and JSON shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import Body, JSONBody

from app.accounts.deps import bearer_token
from app.accounts.forms import clean_profile_update, clean_registration
from app.accounts.identifiers import IdentifierChanges
from app.accounts.reauth import Reauthentication, RequestOrigin
from app.accounts.schemas import (
    AuthResponse,
    MessageResponse,
    ProfileResponse,
    ProfileUpdateRequest,
    RefreshRequest,
    RefreshResponse,
    RegisterRequest,
    UserView,
)
from app.accounts.service import AuthService, RefreshForm, Session
from app.accounts.tokens import TokenClaims
from app.core.errors import (
    AppError,
    InvalidToken,
    LimiterUnavailable,
    NotAuthenticated,
    RateLimited,
    UnsupportedMediaType,
    error_responses,
    try_again_in,
)
from app.core.http import user_agent_of
from app.db.models import User
from app.ratelimit.limiter import Decision, LoginLimiter, rate_limit_headers


def user_agent(request: Request[Any, Any, Any]) -> str | None:
    return user_agent_of(request.headers.get("user-agent"))


async def touch_session(state: State, request: Request[Any, Any, Any], session: Session) -> None:
    """The session's last use (app/accounts/sessions.py): on sign-in and refresh, never per request."""
    if not state.session_tracker.enabled:
        return
    address = state.client_resolver.address_of(request.scope)
    claims = session.access.claims
    ip = str(address) if address is not None else None
    await state.session_tracker.touch(claims.user_id, claims.session_id, ip, request.headers.get("user-agent"))


def request_origin(request: Request[Any, Any, Any], state: State) -> RequestOrigin:
    address = state.client_resolver.address_of(request.scope)
    return RequestOrigin(
        ip_address=str(address) if address is not None else None,
        user_agent=user_agent(request),
        request_id=(request.headers.get("x-request-id") or "")[:64] or None,
    )


def _expires_in(session: Session) -> int:
    claims = session.access.claims
    return int((claims.expires_at - claims.issued_at).total_seconds())


def auth_response(session: Session, message: str, **extra: Any) -> AuthResponse:
    assert session.refresh is not None
    return AuthResponse(
        message=message,
        access_token=session.access.token,
        refresh_token=session.refresh.token,
        expires_in=_expires_in(session),
        user_id=session.user.id,
        user_type=session.user.user_type,
        user=UserView.of(session.user),
        **extra,
    )


_refresh_body: msgspec.json.Decoder[RefreshRequest | None] = msgspec.json.Decoder(RefreshRequest | None)


async def _optional_json_body(request: Request[Any, Any, Any]) -> RefreshRequest | None:
    """Refresh and logout accept no body at all (Flask-era header form), JSON ``null``, or a JSON object."""
    body = await request.body()
    if not body.strip():
        return None
    if "json" not in request.headers.get("content-type", "application/json"):
        raise UnsupportedMediaType()
    try:
        return _refresh_body.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise AppError("The request body has the wrong shape.", code="validation_error") from exc
    except msgspec.DecodeError as exc:
        raise AppError("The request body is not valid JSON.", code="malformed_json") from exc


BODY_ERRORS = (400, 413, 415)


@dataclass
class OptionalBodyOperation(Operation):
    """Refresh and logout also take no body at all (the Flask-era header form)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


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
        session = await auth_service.register(account, user_agent(request))
        body = auth_response(session, "Registration successful", pin_enabled=session.user.enable_pin_auth)
        return Response(body, status_code=201, headers=headers)

    @post(
        "/auth/refresh",
        status_code=200,
        summary="New access token from a refresh token (Bearer header, or JSON body which rotates it)",
        responses=error_responses(*BODY_ERRORS, 401),
        operation_class=OptionalBodyOperation,
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
        data: Annotated[RefreshRequest | None, Body(description="Optional: the body form")] = None,
    ) -> RefreshResponse:
        body = await _optional_json_body(request)
        token: str | None
        form: RefreshForm
        if body is not None and body.refresh_token:
            token, form = body.refresh_token, "body"
        else:
            token, form = bearer_token(request), "header"
        if not token:
            raise NotAuthenticated("Send the refresh token as a Bearer token or as refresh_token.")
        session = await auth_service.refresh(token, form, user_agent(request))
        await touch_session(state, request, session)
        response = RefreshResponse(
            message="Token refreshed",
            access_token=session.access.token,
            expires_in=_expires_in(session),
        )
        if session.refresh is not None:
            response.refresh_token = session.refresh.token
        return response

    @post(
        "/auth/logout",
        status_code=200,
        summary="End this session: its refresh tokens and access tokens",
        responses=error_responses(*BODY_ERRORS, 401),
        operation_class=OptionalBodyOperation,
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
        data: Annotated[RefreshRequest | None, Body(description="Optional: the refresh token")] = None,
    ) -> MessageResponse:
        body = await _optional_json_body(request)
        token = bearer_token(request) or (body.refresh_token if body else None)
        if not token:
            raise NotAuthenticated()
        claims: TokenClaims | None = None
        for kind in ("access", "refresh"):
            try:
                # An expired but genuine token may still end its session.
                claims = state.token_issuer.decode(token, kind, allow_expired=True)
                break
            except InvalidToken:
                continue
        if claims is None:
            raise InvalidToken()
        await auth_service.logout(claims)
        return MessageResponse(message="Logged out successfully")

    @get(
        ["/auth/profile", "/settings/account"],
        summary="The signed-in user's profile (also the settings page's account settings)",
        responses=error_responses(401),
    )
    async def get_profile(
        self, request: Request[Any, Any, Any], current_user: NamedDependency[User]
    ) -> ProfileResponse:
        settings_page = request.url.path.startswith("/api/settings/")
        return ProfileResponse.of_user(
            current_user, "Account settings retrieved" if settings_page else "Profile retrieved"
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
