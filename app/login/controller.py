"""``POST /api/auth/login``: where a sign-in is validated, verified and finished.

The gate (:mod:`app.login.gate`) has already taken the client's budget and opened the
:class:`~app.login.attempt.LoginAttempt`; this handler validates the body, takes the phone
number's budget, verifies the credential through the accounts service and settles the attempt,
which records its audit event.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.accounts.forms import clean_login
from app.accounts.schemas import AuthResponse, LoginRequest
from app.accounts.service import AuthService, LoginFailed
from app.core.errors import InvalidCredentials, error_responses
from app.core.http import BODY_ERRORS
from app.credentials.verification import VerificationBusy
from app.login.attempt import LoginAttempt
from app.login.gate import ATTEMPT_STATE_KEY, login_gate_factory
from app.sessions.deps import client_use


class LoginController(Controller):
    path = "/api/auth"
    tags = ["auth"]

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
            s503="Rate limiter unavailable (fails closed), or too busy to verify in time (`busy`)",
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
            user = await auth_service.authenticate(credentials, deadline_ms=attempt.verify_deadline_ms)
        except VerificationBusy:
            await attempt.record_unfinished("busy")  # unverified: both slots go back
            raise
        except LoginFailed as failed:
            await attempt.finish(success=False, reason=failed.failure.reason, user_id=failed.failure.user_id)
            raise InvalidCredentials(headers=attempt.headers()) from None
        # A success is recorded only once its session is stored: a sign-in whose session could not be
        # committed is a failure (``session_not_stored``), and its client is not remembered as known.
        try:
            sign_in = await auth_service.start_session(user, client_use(request, state))
            await auth_service.commit()
        except BaseException:
            await attempt.record_unfinished("session_not_stored", user_id=user.id)  # both slots go back
            raise
        await attempt.finish(success=True, reason="ok", user_id=user.id)
        body = AuthResponse.of(sign_in, "Login successful", auth_method=credentials.method)
        return Response(body, headers=attempt.headers(success=True))
