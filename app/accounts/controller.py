"""HTTP side of the auth API: paths and JSON shapes of the Flask-era backend."""

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
from app.accounts.schemas import (
    AuthResponse,
    LoginRequest,
    MessageResponse,
    ProfileResponse,
    ProfileUpdateRequest,
    RefreshRequest,
    RefreshResponse,
    RegisterRequest,
    UserView,
    clean_login,
    clean_profile_update,
    clean_registration,
)
from app.accounts.service import AuthService, LoginFailed, RefreshForm, Session
from app.accounts.tokens import TokenClaims
from app.core.errors import (
    AppError,
    InvalidCredentials,
    InvalidToken,
    NotAuthenticated,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    error_responses,
)
from app.db.models import User
from app.login.attempt import LoginAttempt, rate_limit_headers
from app.login.gate import ATTEMPT_STATE_KEY, login_gate_factory
from app.ratelimit.limiter import Decision, LimiterUnavailable, LoginLimiter

USER_AGENT_MAX = 255


def user_agent(request: Request[Any, Any, Any]) -> str | None:
    return request.headers.get("user-agent", "")[:USER_AGENT_MAX] or None


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
        raise ServiceUnavailable(
            "Registration is temporarily unavailable. Please try again in a minute.",
            code="rate_limiter_unavailable",
        ) from None
    if not decision.allowed:
        raise RateLimited(
            "Too many registrations from this network. Please wait before trying again.",
            headers={"Retry-After": str(decision.retry_after), **rate_limit_headers("register", decision)},
            extra={"retry_after": decision.retry_after},
        )
    return decision


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post(
        "/register",
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
        peer = request.scope.get("client")
        address = state.client_resolver.resolve(peer[0] if peer else None, request.scope["headers"])
        decision = await take_register_budget(state.limiter, state.client_resolver.client_key(address), state)
        headers = rate_limit_headers("register", decision) if decision else {}
        account = clean_registration(data, state.settings.default_phone_region)
        session = await auth_service.register(account, user_agent(request))
        body = auth_response(session, "Registration successful", pin_enabled=session.user.enable_pin_auth)
        return Response(body, status_code=201, headers=headers)

    @post(
        "/login",
        status_code=200,
        summary="Sign in with a phone number and a password or PIN",
        middleware=[login_gate_factory],
        responses=error_responses(
            *BODY_ERRORS,
            401,
            403,
            429,
            503,
            s401="Wrong phone number, password or PIN (one answer for all)",
            s403="PIN sign-in locked after too many wrong PINs; a password sign-in unlocks it",
            s429="Failure budget spent; see Retry-After",
            s503="Rate limiter unavailable (fails closed)",
        ),
    )
    async def login(
        self,
        data: JSONBody[LoginRequest],
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[AuthResponse]:
        attempt: LoginAttempt = request.scope["state"][ATTEMPT_STATE_KEY]
        credentials = clean_login(data, state.settings.default_phone_region)
        attempt.phone_number = credentials.phone_number
        attempt.method = credentials.method  # type: ignore[assignment]
        await attempt.reserve_account()
        try:
            user = await auth_service.authenticate(credentials)
        except LoginFailed as failed:
            await attempt.finish(success=False, reason=failed.failure.reason, user_id=failed.failure.user_id)
            raise InvalidCredentials(headers=attempt.headers()) from None
        await attempt.finish(success=True, reason="ok", user_id=user.id)
        session = await auth_service.start_session(user, user_agent(request))
        body = auth_response(session, "Login successful", auth_method=credentials.method)
        return Response(body, headers=attempt.headers(success=True))

    @post(
        "/refresh",
        status_code=200,
        summary="New access token from a refresh token (Bearer header, or JSON body which rotates it)",
        responses=error_responses(*BODY_ERRORS, 401),
        operation_class=OptionalBodyOperation,
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
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
        response = RefreshResponse(
            message="Token refreshed",
            access_token=session.access.token,
            expires_in=_expires_in(session),
        )
        if session.refresh is not None:
            response.refresh_token = session.refresh.token
        return response

    @post(
        "/logout",
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

    @get("/profile", summary="The signed-in user's profile", responses=error_responses(401))
    async def get_profile(self, current_user: NamedDependency[User]) -> ProfileResponse:
        return ProfileResponse.of_user(current_user, "Profile retrieved")

    @put(
        "/profile",
        summary="Change the profile; password or PIN changes need current_password",
        responses=error_responses(*BODY_ERRORS, 401, 409),
    )
    async def update_profile(
        self,
        data: JSONBody[ProfileUpdateRequest],
        request: Request[Any, Any, Any],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> ProfileResponse:
        return await apply_profile_update(data, request, current_user, auth_service, state)


async def apply_profile_update(
    data: ProfileUpdateRequest,
    request: Request[Any, Any, Any],
    user: User,
    auth_service: AuthService,
    state: State,
) -> ProfileResponse:
    changes = clean_profile_update(data, user, state.settings.default_phone_region)
    session = await auth_service.update_profile(user, changes, user_agent(request))
    if session is None:
        return ProfileResponse.of_user(user, "Profile updated successfully")
    assert session.refresh is not None
    return ProfileResponse.of_user(
        user,
        "Profile updated. You were signed out on your other devices.",
        access_token=session.access.token,
        refresh_token=session.refresh.token,
    )


class AccountSettingsController(Controller):
    """``/api/settings/account``: the same profile, as today's settings page uses it."""

    path = "/api/settings/account"
    tags = ["settings"]

    @get("/", summary="The signed-in user's account settings", responses=error_responses(401))
    async def get_account(self, current_user: NamedDependency[User]) -> ProfileResponse:
        return ProfileResponse.of_user(current_user, "Account settings retrieved")

    @put(
        "/",
        summary="Change account settings; password or PIN changes need current_password",
        responses=error_responses(*BODY_ERRORS, 401, 409),
    )
    async def update_account(
        self,
        data: JSONBody[ProfileUpdateRequest],
        request: Request[Any, Any, Any],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> ProfileResponse:
        return await apply_profile_update(data, request, current_user, auth_service, state)
