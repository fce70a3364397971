"""Re-authentication for sensitive profile changes: a recent sign-in, or the current password.

The pattern of GitHub's sudo mode and OIDC ``max_age``: a change of PIN, password, phone number,
email or PIN sign-in is accepted when the session signed in (``auth_time``) within
``REAUTH_WINDOW_SECONDS``, or when the request carries the correct ``current_password``. A
``current_password`` is a password guess like any sign-in: it takes a slot of the number's
password budget first (from every client, with no device exemption) and a wrong one is audited as a
login attempt (``reauth_failed``), so the profile route is no guessing oracle beside the login route.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from app.accounts.forms import ProfileChanges
from app.audit.pipeline.events import LoginEvent, encode_event, new_event
from app.audit.pipeline.publisher import AuditPublisher, AuditUnavailable
from app.core.errors import AccountLocked, AppError, FieldError, LimiterUnavailable, ValidationFailed, try_again_in
from app.core.settings import Settings
from app.credentials.passwords import Hasher
from app.db.models import User
from app.ratelimit.limiter import Decision, LoginLimiter, rate_limit_headers
from app.sessions.tokens import TokenClaims

logger = logging.getLogger(__name__)

# What each sensitive change is called in the message that asks for a fresh sign-in.
SENSITIVE_CHANGES = {
    "new_pin": "your PIN",
    "new_password": "your password",
    "phone_number": "your phone number",
    "email": "your email address",
    "enable_pin_auth": "PIN sign-in",
}


class ReauthenticationRequired(AppError):
    status_code = 403
    code = "reauthentication_required"
    message = "For your security, sign in again to make this change."


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """Who asked, for the audit event."""

    ip_address: str | None
    user_agent: str | None
    request_id: str | None


def sensitive_changes(changes: ProfileChanges, user: User) -> list[str]:
    """The sensitive changes ``changes`` makes, in :data:`SENSITIVE_CHANGES` order; unchanged values are not."""
    found = []
    if changes.new_pin is not None:
        found.append("new_pin")
    if changes.new_password is not None:
        found.append("new_password")
    if "phone_number" in changes.fields:
        found.append("phone_number")
    if "email" in changes.fields and (changes.fields["email"] or "").lower() != (user.email or "").lower():
        found.append("email")
    pin_on = bool(user.enable_pin_auth and user.pin_hash)
    if "enable_pin_auth" in changes.fields and bool(changes.fields["enable_pin_auth"]) != pin_on:
        found.append("enable_pin_auth")
    return found


def signed_in_within(claims: TokenClaims, seconds: int, now: datetime.datetime) -> bool:
    return claims.auth_time is not None and now - claims.auth_time <= datetime.timedelta(seconds=seconds)


class Reauthentication:
    def __init__(self, limiter: LoginLimiter, publisher: AuditPublisher, hasher: Hasher, settings: Settings) -> None:
        self.limiter = limiter
        self.publisher = publisher
        self.hasher = hasher
        self.window_seconds = settings.reauth_window_seconds
        self.fail_open = settings.rate_limit_fail_open

    async def confirm(self, user: User, claims: TokenClaims, changes: ProfileChanges, origin: RequestOrigin) -> None:
        """Return when ``changes`` may be made; else ReauthenticationRequired, a field error, or a 429."""
        sensitive = sensitive_changes(changes, user)
        if not sensitive:
            return
        if changes.current_password is not None:
            await self._verify_password(user, changes.current_password, origin)
            return
        if signed_in_within(claims, self.window_seconds, datetime.datetime.now(datetime.UTC)):
            return
        raise ReauthenticationRequired(f"For your security, sign in again to change {SENSITIVE_CHANGES[sensitive[0]]}.")

    async def _verify_password(self, user: User, password: str, origin: RequestOrigin) -> None:
        # An account without a phone (an imported family-managed child) is budgeted by its id.
        identity = user.phone_number or f"user:{user.id}"

        def event(reason: str, success: bool = False) -> LoginEvent:
            return new_event(
                phone_number=user.phone_number or "",
                success=success,
                reason=reason,
                auth_method="password",
                user_id=user.id,
                ip_address=origin.ip_address,
                user_agent=origin.user_agent,
                request_id=origin.request_id,
            )

        refusal = event("reauth_failed")
        decision: Decision | None
        try:
            decision = await self.limiter.reserve_account(identity, "password", refusal_event=encode_event(refusal))
        except LimiterUnavailable:
            if not self.fail_open:
                await self._store(event("limiter_unavailable"))
                raise
            logger.warning("rate limiter unavailable; current password checked without a budget (RATE_LIMIT_FAIL_OPEN)")
            decision = None
        if decision is not None and not decision.allowed:
            if decision.event_queued:
                self.publisher.metrics.events_published.inc()  # the reserve script appended the refusal
            else:
                await self._store(refusal, backlog_full=True)
            raise AccountLocked(
                f"{AccountLocked.cause} {try_again_in(decision.retry_after)}",
                headers={"Retry-After": str(decision.retry_after), **rate_limit_headers("password", decision)},
                extra={"retry_after": decision.retry_after},
            )

        result = await self.hasher.verify_password(user.password_hash, password)
        failure = None if result.ok else event("reauth_failed")
        reservation = decision.reservation if decision is not None else None
        if reservation is not None:
            try:
                queued = await self.limiter.settle_login(
                    None, reservation, "password", result.ok, encode_event(failure) if failure else None
                )
            except LimiterUnavailable:
                queued = False
            if queued and failure is not None:
                self.publisher.metrics.events_published.inc()  # the settle script appended it
            if failure is not None and not queued:
                await self._store(failure)
        elif failure is not None:
            await self._store(failure)
        if failure is not None:
            raise ValidationFailed([FieldError("current_password", "Your current password is not correct.")])

    async def _store(self, event: LoginEvent, *, backlog_full: bool = False) -> None:
        try:
            await self.publisher.store_directly(event, backlog_full=backlog_full)
        except AuditUnavailable:
            logger.error("a re-authentication attempt could not be audited: Redis and Postgres both refused it")
