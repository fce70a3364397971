"""One USSD call: the gateway's, the number's and the session's budgets, and its one audit event.

A :class:`UssdAttempt` is a :class:`~app.login.attempt.LoginAttempt` whose "client" is the gateway
credential (its failure budget per minute) rather than an address, so the number's PIN lock is
taken, settled and cleared by exactly the code and keys the login endpoint uses: a lock earned over
USSD locks the app's PIN sign-in too, and a password sign-in from the app clears it. On top, each
USSD session has its own few tries. Every budget is reserved before the PIN is verified and settled
after, with the same reserve/settle scripts, so concurrency cannot verify more than any budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec

from app.audit.pipeline.events import SESSION_ID_MAX, LoginEvent, encode_event
from app.audit.pipeline.publisher import AuditUnavailable
from app.core.errors import AppError, LimiterUnavailable, PinLocked, RateLimited
from app.login.attempt import LoginAttempt
from app.ratelimit.limiter import Budget, Decision, Outcome, Reservation, UssdRegistrationBudget, rate_limit_headers

logger = logging.getLogger(__name__)

POLICY = "ussd"


class GatewayBudgetSpent(RateLimited):
    code = "rate_limited"
    message = "Too many wrong PINs through this service right now. Please try again in a few minutes."


class RegistrationsSpent(RateLimited):
    code = "rate_limited"
    message = "Too many registrations through this service right now. Please try again in a few minutes."


class NumberRegistrationsSpent(RateLimited):
    code = "rate_limited"
    message = "Too many registrations for this number today. Please try again later."


class SessionLocked(AppError):
    status_code = 403
    code = "session_locked"
    message = "Too many wrong PINs in this session. Please dial again later."


class UssdPinLocked(PinLocked):
    message = "Your PIN is locked after too many wrong PINs. Sign in with your password in the app to unlock it."


@dataclass
class UssdAttempt(LoginAttempt):
    service_name: str = ""
    session_id: str | None = None
    session_reservation: Reservation | None = None

    def event(self, reason: str, *, success: bool = False, user_id: int | None = None) -> LoginEvent:
        base = super().event(reason, success=success, user_id=user_id)
        session = self.session_id[:SESSION_ID_MAX] if self.session_id else None
        return msgspec.structs.replace(base, channel="ussd", session_id=session, service_name=self.service_name)

    def headers(self, success: bool = False) -> dict[str, str]:
        if self.client_decision is None:
            return {}
        return rate_limit_headers(POLICY, self.client_decision, "success" if success else "failure")

    @property
    def session_key(self) -> str:
        """Sessions are the gateway's ids: two gateways' sessions never share a budget."""
        return f"{self.service_name}:{self.session_id}"

    async def reserve_pin_check(self) -> None:
        """The gateway's budget, then the number's PIN lock, then the session's tries; a refusal raises."""
        gateway = await self._reserve("ussd_gateway", self.service_name, "rate_limited")
        if gateway is not None and not gateway.allowed:
            raise GatewayBudgetSpent(
                headers={"Retry-After": str(gateway.retry_after), **rate_limit_headers(POLICY, gateway)},
                extra={"retry_after": gateway.retry_after},
            )
        self.client_decision = gateway
        try:
            await self.reserve_account()  # releases the gateway's slot itself when it refuses
        except PinLocked:
            raise UssdPinLocked() from None
        session = await self._reserve("ussd_session", self.session_key, "session_locked")
        if session is not None and not session.allowed:
            raise SessionLocked()
        self.session_reservation = session.reservation if session is not None else None

    async def count_registration(self, phone_number: str) -> None:
        """The credential's registrations, then the number's: every registration counts, one answering
        409 too, so neither mass registration nor asking which numbers have accounts is unlimited.

        The credential's budget is counted first: calls it refuses never use up a number's. A refusal
        is this call's outcome (429, recorded once, ``rate_limited``).
        """
        budgets: tuple[tuple[UssdRegistrationBudget, str, type[RateLimited]], ...] = (
            ("ussd_register", self.service_name, RegistrationsSpent),
            ("ussd_register_number", phone_number, NumberRegistrationsSpent),
        )
        for budget, identity, refusal in budgets:
            try:
                decision = await self.limiter.hit_ussd_registration(budget, identity)
            except LimiterUnavailable:
                if self.fail_open:
                    logger.warning("rate limiter unavailable; USSD %s budget skipped (RATE_LIMIT_FAIL_OPEN)", budget)
                    continue
                await self.refuse_unavailable()
                raise
            if not decision.allowed:
                await self.finish(success=False, reason="rate_limited")
                raise refusal(
                    headers={"Retry-After": str(decision.retry_after), **rate_limit_headers(POLICY, decision)},
                    extra={"retry_after": decision.retry_after},
                )

    async def finish(self, *, success: bool, reason: str, user_id: int | None = None) -> None:
        """Settle every budget and publish the event; the calls go to Redis in one pipeline."""
        session, self.session_reservation = self.session_reservation, None
        outcome: Outcome = "success" if success else "failure"
        await asyncio.gather(
            super().finish(success=success, reason=reason, user_id=user_id), self._settle_quietly(session, outcome)
        )

    async def record_unfinished(self, reason: str = "invalid_request", user_id: int | None = None) -> None:
        session, self.session_reservation = self.session_reservation, None
        await asyncio.gather(super().record_unfinished(reason, user_id), self._settle_quietly(session, "release"))

    async def _reserve(self, budget: Budget, identity: str, reason: str) -> Decision | None:
        """One budget's slot; a refusal is audited (in the script call) and every slot taken is released."""
        refusal = self.event(reason)
        try:
            (reply,) = await self.limiter.execute(
                [self.limiter.reserve_call(budget, identity, refusal_event=encode_event(refusal))]
            )
        except LimiterUnavailable:
            if self.fail_open:
                logger.warning("rate limiter unavailable; the USSD %s budget skipped (RATE_LIMIT_FAIL_OPEN)", budget)
                return None
            await self._release_taken()
            await self.refuse_unavailable()
            raise
        decision = self.limiter.decision(budget, identity, reply)
        if decision.allowed:
            return decision
        if decision.event_queued:
            self.publisher.metrics.events_published.inc()
        else:
            await self.publisher.store_directly(refusal, backlog_full=True)
        self.recorded = True
        await self._release_taken()
        return decision

    async def _release_taken(self) -> None:
        taken = (self.client_reservation, self.account_reservation, self.session_reservation)
        self.client_decision = self.account_reservation = self.session_reservation = None
        await asyncio.gather(*(self._settle_quietly(reservation, "release") for reservation in taken))

    async def _settle_quietly(self, reservation: Reservation | None, outcome: Outcome) -> None:
        if reservation is None:
            return
        try:
            await self.limiter.settle(reservation, outcome)
        except LimiterUnavailable:
            logger.warning("could not settle a USSD %s reservation; it lapses by itself", reservation.budget)


@asynccontextmanager
async def recorded(attempt: UssdAttempt) -> AsyncIterator[UssdAttempt]:
    """Whatever happens inside (a 400, an error, a caller hanging up), the attempt is recorded once."""
    try:
        yield attempt
    finally:
        if not attempt.recorded:
            try:
                await asyncio.shield(attempt.record_unfinished())
            except AuditUnavailable:
                logger.error("USSD call could not be audited: Redis and Postgres both refused it")
