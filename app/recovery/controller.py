"""Self-service recovery's endpoints: ask for a code (SMS, or USSD for the app), complete in the app,
or reset a PIN within a USSD session.

- ``POST /api/auth/recovery/start``: a 6-digit code by SMS; the same answer, status and time
  (padded to ``SMS_ANSWER_MS``) whether or not the number has an account, and no SMS without one.
  Budgets (every request that passes the one before counts, exact under concurrency: the limiter's
  hit script): the client address, the number's prefix, a resend cool-down, the number per hour and
  per day, and the global daily budget. The global budget counts account-less numbers too, so that
  its refusal (503) cannot tell who has an account.
- ``POST /api/auth/recovery/complete``: a code from either channel and a new password or PIN; a
  wrong code is a failed sign-in against the client's and the number's budgets (the login
  endpoint's), and the code's own five tries.
- ``POST /api/ussd/recovery-code`` and ``/reset-pin``: the gateway (scope ``ussd``), for the number
  the network says is dialling.

Every call is one audit row: ``sms`` for the SMS requests, ``ussd`` for the gateway's, and for a
completion the channel that carried the code (``http`` when there was none).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import phonenumbers
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from app.accounts.schemas import AuthResponse, split_name
from app.accounts.service import AuthService
from app.audit.pipeline.events import LoginEvent, encode_event, new_event
from app.audit.pipeline.publisher import AuditUnavailable
from app.core.errors import (
    AppError,
    FieldErrors,
    InvalidCredentials,
    LimiterUnavailable,
    RateLimited,
    ServiceUnavailable,
    error_responses,
    try_again_in,
)
from app.core.http import BODY_ERRORS, read_whole_body, request_id_of, user_agent_of
from app.core.openapi import SIGNED_IN, LooseBody, service, with_body
from app.core.phones import PhoneNumberError, normalise_phone
from app.credentials.passwords import password_problem, pin_problem
from app.db.models import User
from app.login.attempt import LoginAttempt
from app.platform.credentials import ServiceClient
from app.ratelimit.limiter import SmsBudget
from app.recovery.codes import CODE_DIGITS, CodeStore, clean_code
from app.recovery.service import RecoveryService, answers_knowledge_check
from app.recovery.sms import SmsNotSent
from app.sessions.deps import client_use
from app.ussd.attempt import recorded
from app.ussd.gateway import gateway_attempt, gateway_body, require_gateway
from app.ussd.schemas import CALLER_BODY, PIN_RESET_BODY, SESSION_ID_PATTERN

logger = logging.getLogger(__name__)

USSD_FALLBACK = "Dial the Lady's Essence USSD code and choose Forgot PIN, or call support."


class RecoveryStartRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"phone_number"})
    phone_number: str | None = None


class RecoveryCompleteRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"phone_number", "code"})  # and new_password, new_pin or both
    phone_number: str | None = None
    code: str | None = None
    new_password: str | None = None
    new_pin: str | None = None


class RecoveryStarted(msgspec.Struct, kw_only=True):
    message: str
    expires_in: int  # seconds a code sent now stays good


class UssdMessage(msgspec.Struct, kw_only=True):
    message: str  # what the menu shows: at most 160 characters


class SmsUnavailable(ServiceUnavailable):
    code = "sms_unavailable"
    message = f"We cannot send text messages right now. {USSD_FALLBACK}"


class SmsNotDelivered(ServiceUnavailable):
    code = "sms_failed"
    message = f"The text message could not be sent. Please try again in a few minutes. {USSD_FALLBACK}"


class SmsRateLimited(RateLimited):
    message = "Too many code requests. Please wait before asking again."


class WrongCode(InvalidCredentials):
    code = "invalid_code"
    message = "That code is wrong or has expired. Ask for a new code and try again."


class NoAccount(AppError):
    status_code = 404
    code = "no_account"
    message = "No account uses this number. Dial again and choose Register."


class WrongAnswer(InvalidCredentials):
    code = "wrong_answer"
    message = "That answer does not match the account. Dial again to try once more."


class ResetLocked(AppError):
    status_code = 403
    code = "reset_locked"
    message = "Too many wrong answers for this number today. Please call support."


def _phone(errors: FieldErrors, raw: str | None, region: str, field: str = "phone_number") -> str:
    if not raw or not raw.strip():
        errors.add(field, "Enter your phone number.")
        return ""
    try:
        return normalise_phone(raw, region)
    except PhoneNumberError as exc:
        errors.add(field, str(exc))
        return ""


def _country_of(phone: str) -> str | None:
    return phonenumbers.region_code_for_number(phonenumbers.parse(phone, None))


def _prefix(phone: str) -> str:
    """The range a pumping run rotates through: all but the last three digits."""
    return phone[:-3]


def sms_text(code: str, minutes: int) -> str:
    return f"{code} is your Lady's Essence code. It works for {minutes} minutes. Never share it, not even with us."


def ussd_code_text(code: str, minutes: int) -> str:
    return f"Your sign-in code: {code}. Type it in the Lady's Essence app within {minutes} minutes. Never share it."


def _service(auth: AuthService, state: State) -> RecoveryService:
    return RecoveryService(auth, state.redis, state.limiter)


@dataclass
class SmsAudit:
    """One ``sms`` row per recovery/start call."""

    state: State
    client_key: str
    ip_address: str | None
    user_agent: str | None
    request_id: str
    phone_number: str = ""
    recorded: bool = False

    async def record(self, reason: str, *, success: bool = False, user_id: int | None = None) -> None:
        event = new_event(
            phone_number=self.phone_number,
            success=success,
            reason=reason,
            user_id=user_id,
            ip_address=self.ip_address,
            user_agent=self.user_agent,
            request_id=self.request_id,
            channel="sms",
        )
        self.recorded = True
        try:
            await self.state.audit_publisher.publish(event, self.client_key)
        except AuditUnavailable:
            logger.error("a recovery SMS request could not be audited: Redis and Postgres refused it")


@dataclass
class CompletionAttempt(LoginAttempt):
    """A completion is a sign-in attempt (the login endpoint's budgets), recorded in the code's channel."""

    channel: Literal["http", "sms", "ussd"] = "http"

    def event(self, reason: str, *, success: bool = False, user_id: int | None = None) -> LoginEvent:
        base = super().event(reason, success=success, user_id=user_id)
        return msgspec.structs.replace(base, channel=self.channel)

    async def reserve_client(self) -> None:
        refusal = self.event("rate_limited")
        try:
            decision = await self.limiter.reserve_client(self.client_key, refusal_event=encode_event(refusal))
        except LimiterUnavailable:
            if self.fail_open:
                logger.warning("rate limiter unavailable; recovery completed without a budget (RATE_LIMIT_FAIL_OPEN)")
                return
            await self.refuse_unavailable()
            raise
        if not decision.allowed:
            if decision.event_queued:
                self.publisher.metrics.events_published.inc()
            else:
                await self.publisher.store_directly(refusal, backlog_full=True)
            self.recorded = True
            raise RateLimited(
                f"Too many failed attempts from this device. {try_again_in(decision.retry_after)}",
                headers={"Retry-After": str(decision.retry_after)},
                extra={"retry_after": decision.retry_after},
            )
        self.client_decision = decision


async def send_code(
    phone: str, audit: SmsAudit, auth_service: AuthService, state: State, *, user: User | None
) -> User | None:
    """Budgets, then a code by SMS to the number's account (``user``, or the one the number has)."""
    settings = state.settings
    errors = FieldErrors()
    if _country_of(phone) not in settings.sms_allowed_countries:
        await audit.record("country_refused")
        errors.add("phone_number", f"Codes by SMS go only to numbers of: {', '.join(settings.sms_allowed_countries)}.")
        errors.raise_if_any()
    sender = state.sms_sender
    if sender is None:
        await audit.record("code_not_sent")
        raise SmsUnavailable()
    budgets: tuple[tuple[SmsBudget, str], ...] = (
        ("sms_client", audit.client_key),
        ("sms_prefix", _prefix(phone)),
        ("sms_resend", phone),
        ("sms_number_hour", phone),
        ("sms_number_day", phone),
        ("sms_global", "all"),
    )
    for budget, identity in budgets:
        try:
            decision = await state.limiter.hit_sms(budget, identity)
        except LimiterUnavailable:
            await audit.record("limiter_unavailable")
            raise
        if decision.allowed:
            continue
        if budget == "sms_global":
            await audit.record("sms_budget_spent")
            raise SmsUnavailable(headers={"Retry-After": str(decision.retry_after)})
        await audit.record("rate_limited")
        raise SmsRateLimited(
            f"{SmsRateLimited.message} {try_again_in(decision.retry_after)}",
            headers={"Retry-After": str(decision.retry_after)},
            extra={"retry_after": decision.retry_after},
        )
    if user is None:
        user = await _service(auth_service, state).account_for(phone)
    await auth_service.commit()  # the connection goes back before the provider is called
    if user is None:
        await audit.record("code_not_sent")
    else:
        codes: CodeStore = state.recovery_codes
        code, digest = await codes.issue(phone, "sms")
        try:
            await sender.send(phone, sms_text(code, settings.recovery_code_minutes))
        except SmsNotSent as failure:
            await codes.withdraw(phone, digest)  # a code the person never got must not stay usable
            logger.warning("recovery SMS not sent: %s", failure)
            await audit.record("provider_failed", user_id=user.id)
            raise SmsNotDelivered() from None
        await audit.record("code_sent", success=True, user_id=user.id)
    return user


class RecoveryController(Controller):
    path = "/api/auth/recovery"
    tags = ["auth"]

    @post(
        "/start",
        status_code=202,
        summary="Send a recovery code by SMS (the same answer whether or not the number has an account)",
        responses=error_responses(
            *BODY_ERRORS,
            429,
            503,
            s429="The client's, the number's or the prefix's budget, or the resend cool-down; see Retry-After",
            s503="SMS is off, the daily SMS budget is spent, or the provider failed: recover by USSD instead",
        ),
        operation_id="startRecovery",
    )
    async def start(
        self,
        data: JSONBody[RecoveryStartRequest],
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[RecoveryStarted]:
        began = time.monotonic()
        settings = state.settings
        address = state.client_resolver.address_of(request.scope)
        audit = SmsAudit(
            state,
            state.client_resolver.client_key(address),
            str(address) if address is not None else None,
            user_agent_of(request.headers.get("user-agent")),
            request_id_of(request),
        )
        try:
            reply = await self._start(data, audit, auth_service, state)
        finally:
            if not audit.recorded:
                await audit.record("invalid_request")
        # Padded: a number with an account (a code issued, an SMS sent) answers no later than one without.
        await asyncio.sleep(max(0.0, began + settings.sms_answer_ms / 1000 - time.monotonic()))
        return Response(reply)

    async def _start(
        self, data: RecoveryStartRequest, audit: SmsAudit, auth_service: AuthService, state: State
    ) -> RecoveryStarted:
        settings = state.settings
        errors = FieldErrors()
        phone = _phone(errors, data.phone_number, settings.default_phone_region)
        audit.phone_number = phone or (data.phone_number or "")[:20]
        errors.raise_if_any()
        await send_code(phone, audit, auth_service, state, user=None)
        return RecoveryStarted(
            message="If this number has an account, a code is on its way by SMS. Type it in the app.",
            expires_in=settings.recovery_code_minutes * 60,
        )

    @post(
        "/complete",
        status_code=200,
        summary="Sign in with a recovery code and set a new password or PIN; ends every other session",
        responses=error_responses(
            *BODY_ERRORS,
            401,
            429,
            503,
            s401="Wrong, expired, used or withdrawn code (one answer)",
            s429="The client's or the number's failure budget is spent; see Retry-After",
        ),
        operation_id="completeRecovery",
    )
    async def complete(
        self,
        data: JSONBody[RecoveryCompleteRequest],
        request: Request[Any, Any, Any],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[AuthResponse]:
        settings = state.settings
        address = state.client_resolver.address_of(request.scope)
        attempt = CompletionAttempt(
            limiter=state.limiter,
            publisher=state.audit_publisher,
            client_key=state.client_resolver.client_key(address),
            ip_address=str(address) if address is not None else None,
            user_agent=user_agent_of(request.headers.get("user-agent")),
            request_id=request_id_of(request),
            fail_open=settings.rate_limit_fail_open,
            method="password",
        )
        try:
            errors = FieldErrors()
            phone = _phone(errors, data.phone_number, settings.default_phone_region)
            attempt.phone_number = phone or (data.phone_number or "")[:20]
            code = clean_code(data.code or "")
            if not (code.isdigit() and len(code) == CODE_DIGITS):
                errors.add("code", f"Enter the {CODE_DIGITS}-digit code.")
            if (data.new_password is None) == (data.new_pin is None):
                errors.add("new_password", "Choose a new password or a new PIN (one of them).")
            elif data.new_password is not None:
                problem = password_problem(data.new_password, phone_digits=phone.lstrip("+"))
                if problem:
                    errors.add("new_password", problem)
            elif data.new_pin is not None and (problem := pin_problem(data.new_pin)):
                errors.add("new_pin", problem)
            errors.raise_if_any()
            await attempt.reserve_client()
            await attempt.reserve_account()
            checked = await state.recovery_codes.check(phone, code)
            attempt.channel = checked.channel or "http"
            service = _service(auth_service, state)
            user = await service.account_for(phone) if checked.result == "ok" else None
            if user is None:
                reason = "code_dead" if checked.result == "dead" else "code_invalid"
                await attempt.finish(success=False, reason=reason)
                raise WrongCode(headers=attempt.headers())
            squatted = not user.is_phone_verified
            try:
                sign_in = await service.complete(
                    user, client_use(request, state), new_password=data.new_password, new_pin=data.new_pin
                )
            except BaseException:
                await attempt.record_unfinished("session_not_stored", user_id=user.id)
                raise
            await attempt.finish(
                success=True, reason="recovered_unverified" if squatted else "recovered", user_id=user.id
            )
        finally:
            if not attempt.recorded:
                try:
                    await asyncio.shield(attempt.record_unfinished())
                except AuditUnavailable:
                    logger.error("a recovery completion could not be audited: Redis and Postgres refused it")
        body = AuthResponse.of(sign_in, "Your account is recovered.", auth_method="pin" if data.new_pin else "password")
        return Response(body, headers=attempt.headers(success=True))


class PhoneVerifyRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"code"})
    code: str | None = None


class PhoneVerified(msgspec.Struct, kw_only=True):
    message: str
    is_phone_verified: bool


class NoPhoneNumber(AppError):
    code = "no_phone_number"
    message = "Add a phone number to your account first."


class PhoneVerifyController(Controller):
    """Signed in: prove the account's number by a code (SMS, or the USSD menu's code for the app)."""

    path = "/api/auth/phone/verify"
    tags = ["auth"]
    security = SIGNED_IN

    @post(
        "/start",
        status_code=202,
        summary="Send a code by SMS to the signed-in account's number",
        responses=error_responses(400, 401, 413, 415, 429, 503),
        guards=[read_whole_body],  # it takes no body; an oversized one is still the usual 413
        operation_id="startPhoneVerification",
    )
    async def start(
        self,
        request: Request[Any, Any, Any],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> Response[RecoveryStarted]:
        phone = current_user.phone_number
        if phone is None:
            raise NoPhoneNumber()
        address = state.client_resolver.address_of(request.scope)
        audit = SmsAudit(
            state,
            state.client_resolver.client_key(address),
            str(address) if address is not None else None,
            user_agent_of(request.headers.get("user-agent")),
            request_id_of(request),
            phone_number=phone,
        )
        try:
            await send_code(phone, audit, auth_service, state, user=current_user)
        finally:
            if not audit.recorded:
                await audit.record("invalid_request", user_id=current_user.id)
        minutes = state.settings.recovery_code_minutes
        return Response(RecoveryStarted(message="A code is on its way by SMS. Type it here.", expires_in=minutes * 60))

    @post(
        "/confirm",
        status_code=200,
        summary="Confirm the signed-in account's number with a code",
        responses=error_responses(*BODY_ERRORS, 401, 429, 503),
        operation_id="confirmPhoneVerification",
    )
    async def confirm(
        self,
        data: JSONBody[PhoneVerifyRequest],
        request: Request[Any, Any, Any],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> PhoneVerified:
        phone = current_user.phone_number
        if phone is None:
            raise NoPhoneNumber()
        address = state.client_resolver.address_of(request.scope)
        attempt = CompletionAttempt(
            limiter=state.limiter,
            publisher=state.audit_publisher,
            client_key=state.client_resolver.client_key(address),
            ip_address=str(address) if address is not None else None,
            user_agent=user_agent_of(request.headers.get("user-agent")),
            request_id=request_id_of(request),
            fail_open=state.settings.rate_limit_fail_open,
            method="password",
            phone_number=phone,
        )
        try:
            code = clean_code(data.code or "")
            if not (code.isdigit() and len(code) == CODE_DIGITS):
                errors = FieldErrors()
                errors.add("code", f"Enter the {CODE_DIGITS}-digit code.")
                errors.raise_if_any()
            await attempt.reserve_client()
            await attempt.reserve_account()
            checked = await state.recovery_codes.check(phone, code)
            attempt.channel = checked.channel or "http"
            if checked.result != "ok":
                reason = "code_dead" if checked.result == "dead" else "code_invalid"
                await attempt.finish(success=False, reason=reason, user_id=current_user.id)
                raise WrongCode(headers=attempt.headers())
            await auth_service.users.set_columns(current_user, {"is_phone_verified": True})
            await auth_service.commit()
            await attempt.finish(success=True, reason="phone_verified", user_id=current_user.id)
        finally:
            if not attempt.recorded:
                await asyncio.shield(attempt.record_unfinished(user_id=current_user.id))
        return PhoneVerified(message="Your phone number is verified.", is_phone_verified=True)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return str(value).strip() or None


def _caller(errors: FieldErrors, body: dict[str, Any], region: str) -> str:
    phone = _phone(errors, _text(body, "phone_number"), region)
    session = _text(body, "session_id")
    if session is None or not SESSION_ID_PATTERN.match(session):
        errors.add("session_id", "Send the USSD session id (1-64 letters, digits, or . _ : -).")
    return phone


class UssdRecoveryController(Controller):
    path = "/api/ussd"
    tags = ["ussd"]
    dependencies = {"gateway": Provide(require_gateway())}
    security = service("ussd")

    @post(
        "/recovery-code",
        status_code=200,
        summary="A one-time code for the app, for the number that is dialling",
        responses=error_responses(400, 401, 403, 404, 413, 415, 503, s404="No account uses this number"),
        operation_id="ussdRecoveryCode",
        operation_class=with_body(CALLER_BODY),
    )
    async def recovery_code(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[ServiceClient],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> UssdMessage:
        region = state.settings.default_phone_region
        async with recorded(gateway_attempt(request, state, gateway)) as attempt:
            body = await gateway_body(request, attempt, region)
            errors = FieldErrors()
            phone = _caller(errors, body, region)
            errors.raise_if_any()
            user = await _service(auth_service, state).account_for(phone)
            await auth_service.commit()
            if user is None:
                await attempt.finish(success=False, reason="code_not_sent")
                raise NoAccount()
            code, _ = await state.recovery_codes.issue(phone, "ussd")
            await attempt.finish(success=True, reason="code_sent", user_id=user.id)
        return UssdMessage(message=ussd_code_text(code, state.settings.recovery_code_minutes))

    @post(
        "/reset-pin",
        status_code=200,
        summary="Set a new PIN for the number that is dialling, after one knowledge check",
        responses=error_responses(
            400,
            401,
            403,
            404,
            413,
            415,
            503,
            s401="The answer (year of birth, else first name) does not match",
            s403="Too many wrong answers for this number today",
            s404="No account uses this number",
        ),
        operation_id="ussdResetPin",
        operation_class=with_body(PIN_RESET_BODY),
    )
    async def reset_pin(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[ServiceClient],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> UssdMessage:
        region = state.settings.default_phone_region
        limiter = state.limiter
        async with recorded(gateway_attempt(request, state, gateway)) as attempt:
            body = await gateway_body(request, attempt, region)
            errors = FieldErrors()
            phone = _caller(errors, body, region)
            new_pin = _text(body, "new_pin")
            if new_pin is None or (problem := pin_problem(new_pin)):
                errors.add("new_pin", problem if new_pin is not None and problem else "Enter a new 4-digit PIN.")
            answer = _text(body, "answer")
            if answer is None:
                errors.add("answer", "Enter your year of birth, or your first name if the account has no birth date.")
            errors.raise_if_any()
            assert new_pin is not None and answer is not None
            try:
                (reply,) = await limiter.execute([limiter.reserve_call("recovery_knowledge", phone)])
            except LimiterUnavailable:
                await attempt.refuse_unavailable()
                raise
            decision = limiter.decision("recovery_knowledge", phone, reply)
            if not decision.allowed or decision.reservation is None:
                await attempt.finish(success=False, reason="rate_limited")
                raise ResetLocked()
            service = _service(auth_service, state)
            user = await service.account_for(phone)
            await auth_service.commit()
            if user is None:
                await limiter.settle(decision.reservation, "release")
                await attempt.finish(success=False, reason="unknown_account")
                raise NoAccount()
            if not answers_knowledge_check(user, answer):
                await limiter.settle(decision.reservation, "failure")
                await attempt.finish(success=False, reason="knowledge_failed", user_id=user.id)
                raise WrongAnswer()
            await limiter.settle(decision.reservation, "success")
            squatted = not user.is_phone_verified
            await service.reset_pin(user, new_pin)
            await attempt.finish(
                success=True, reason="recovered_unverified" if squatted else "recovered", user_id=user.id
            )
        first_name, _ = split_name(user.name)
        return UssdMessage(message=f"Your new PIN is set, {first_name}. Sign in with it in the app or here."[:160])


RECOVERY_HANDLERS = [RecoveryController, PhoneVerifyController, UssdRecoveryController]
