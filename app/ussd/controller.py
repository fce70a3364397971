"""``POST /api/ussd/...``: the USSD gateway's calls, authenticated as a service with scope ``ussd``.

Each handler opens a :class:`~app.ussd.attempt.UssdAttempt` before it reads the body, so every
call that gets past the credential check (malformed, refused, wrong PIN or right) leaves exactly
one audit row with ``channel = 'ussd'``, its session id and the gateway's name; a call refused for
its credential leaves one too (app/ussd/gateway.py). There is no per-address budget: the gateway is
one address for every caller. Registrations have budgets of their own, per credential and per number.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from app.accounts.schemas import split_name
from app.accounts.service import AuthService, LoginFailed
from app.core.errors import InvalidCredentials, error_responses
from app.core.openapi import service, with_body
from app.credentials.verification import VerificationBusy
from app.platform.credentials import ServiceClient
from app.ussd.attempt import recorded
from app.ussd.gateway import gateway_attempt, gateway_body, require_gateway
from app.ussd.schemas import (
    ACCOUNT_BODY,
    PIN_CHANGE_BODY,
    PIN_CHECK_BODY,
    PinChanged,
    Registered,
    VerifiedPin,
    clean_account,
    clean_pin_change,
    clean_pin_check,
)
from app.ussd.service import PhoneNumberTaken, UssdService


class WrongPin(InvalidCredentials):
    """Unknown number, wrong PIN, PIN not enabled, inactive account: one answer, as on the login endpoint."""

    message = "Incorrect phone number or PIN. Please try again."


ERRORS = error_responses(
    400,
    401,
    403,
    413,
    415,
    429,
    503,
    s401="No valid gateway credential; on verify-pin and change-pin also a wrong number or PIN (one answer)",
    s403="A user's token, a credential without the `ussd` scope, a locked PIN, or a session out of tries",
    s429="The gateway credential's failure or registration budget, or the number's registrations, is spent;"
    " see Retry-After",
)


class UssdController(Controller):
    path = "/api/ussd"
    tags = ["ussd"]
    dependencies = {"gateway": Provide(require_gateway())}
    security = service("ussd")

    @post(
        "/verify-pin",
        status_code=200,
        summary="Check a caller's PIN (the USSD gateway)",
        responses=ERRORS,
        operation_id="ussdVerifyPin",
        operation_class=with_body(PIN_CHECK_BODY),
    )
    async def verify_pin(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[ServiceClient],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> VerifiedPin:
        region = state.settings.default_phone_region
        async with recorded(gateway_attempt(request, state, gateway)) as attempt:
            check = clean_pin_check(await gateway_body(request, attempt, region), region)
            await attempt.reserve_pin_check()
            try:
                user = await UssdService(auth_service).verify_pin(
                    check.phone_number, check.pin, deadline_ms=attempt.verify_deadline_ms
                )
            except VerificationBusy:
                await attempt.record_unfinished("busy")  # unverified: every slot goes back
                raise
            except LoginFailed as failed:
                await attempt.finish(success=False, reason=failed.failure.reason, user_id=failed.failure.user_id)
                raise WrongPin() from None
            await attempt.finish(success=True, reason="ok", user_id=user.id)
        first_name, _ = split_name(user.name)
        return VerifiedPin(
            message="PIN correct.",
            user_id=user.id,
            first_name=first_name,
            user_type=user.user_type,
            enable_pin_auth=user.enable_pin_auth,
        )

    @post(
        "/register",
        status_code=201,
        summary="Create a PIN-only account for a caller",
        responses={**ERRORS, **error_responses(409)},
        operation_id="ussdRegister",
        operation_class=with_body(ACCOUNT_BODY),
    )
    async def register(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[ServiceClient],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Registered:
        region = state.settings.default_phone_region
        async with recorded(gateway_attempt(request, state, gateway)) as attempt:
            account = clean_account(await gateway_body(request, attempt, region), region)
            await attempt.count_registration(account.phone_number)
            try:
                user = await UssdService(auth_service).register(account)
            except PhoneNumberTaken:
                await attempt.finish(success=False, reason="phone_number_taken")
                raise
            await attempt.finish(success=True, reason="registered", user_id=user.id)
        first_name, _ = split_name(user.name)
        return Registered(
            message="Your account is ready. Sign in with your PIN.",
            user_id=user.id,
            first_name=first_name,
            user_type=user.user_type,
            enable_pin_auth=True,
            is_phone_verified=True,
        )

    @post(
        "/change-pin",
        status_code=200,
        summary="Change a caller's PIN; ends the account's other sessions",
        responses=ERRORS,
        operation_id="ussdChangePin",
        operation_class=with_body(PIN_CHANGE_BODY),
    )
    async def change_pin(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[ServiceClient],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[PinChanged]:
        region = state.settings.default_phone_region
        async with recorded(gateway_attempt(request, state, gateway)) as attempt:
            change = clean_pin_change(await gateway_body(request, attempt, region), region)
            await attempt.reserve_pin_check()
            service = UssdService(auth_service)
            try:
                user = await service.verify_pin(
                    change.phone_number, change.current_pin, deadline_ms=attempt.verify_deadline_ms
                )
            except VerificationBusy:
                await attempt.record_unfinished("busy")
                raise
            except LoginFailed as failed:
                await attempt.finish(success=False, reason=failed.failure.reason, user_id=failed.failure.user_id)
                raise WrongPin() from None
            await service.change_pin(user, change.new_pin)
            await attempt.finish(success=True, reason="pin_changed", user_id=user.id)
        return Response(PinChanged(message="Your PIN has been changed.", user_id=user.id))


USSD_HANDLERS = [UssdController]
