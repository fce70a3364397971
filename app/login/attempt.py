"""One login attempt: its budget reservations and its one audit event.

The login middleware opens an attempt for every call of the login endpoint; the handler adds what it
learns (phone number, method, outcome) and finishes it. Whatever happens in between (a 400, a crash,
a client that hangs up), the middleware makes sure the attempt is recorded exactly once.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Literal

from app.audit.pipeline.events import LoginEvent, encode_event, new_event, new_event_identity
from app.audit.pipeline.publisher import AuditPublisher, AuditUnavailable
from app.core.errors import AccountLocked, LimiterUnavailable, PinLocked, try_again_in
from app.ratelimit.limiter import Decision, LoginLimiter, Reservation, rate_limit_headers

logger = logging.getLogger(__name__)

Method = Literal["password", "pin"]


@dataclass
class LoginAttempt:
    limiter: LoginLimiter
    publisher: AuditPublisher
    client_key: str
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    phone_number: str = ""
    method: Method | None = None
    client_decision: Decision | None = None
    account_reservation: Reservation | None = None
    recorded: bool = field(default=False)
    fail_open: bool = False
    # One attempt, one audit row: every event it makes (a refusal a script may have appended before
    # its reply was lost, then what the attempt records instead) is the same event to the audit
    # table, which keeps the first to land (its key is the event id and time).
    identity: tuple[str, datetime.datetime] = field(default_factory=new_event_identity)

    def event(self, reason: str, *, success: bool = False, user_id: int | None = None) -> LoginEvent:
        return new_event(
            identity=self.identity,
            phone_number=self.phone_number,
            success=success,
            reason=reason,
            auth_method=self.method,
            user_id=user_id,
            ip_address=self.ip_address,
            user_agent=self.user_agent,
            request_id=self.request_id,
        )

    @property
    def client_reservation(self) -> Reservation | None:
        return self.client_decision.reservation if self.client_decision else None

    @property
    def verify_deadline_ms(self) -> int | None:
        """When the first of this attempt's reservations lapses: verification must be over by then."""
        lapses = [r.lapses_at_ms for r in (self.client_reservation, self.account_reservation) if r is not None]
        return min(lapses) if lapses else None

    def headers(self, success: bool = False) -> dict[str, str]:
        """RateLimit headers for a finished attempt (see :func:`rate_limit_headers`)."""
        if self.client_decision is None:
            return {}
        return rate_limit_headers("login", self.client_decision, "success" if success else "failure")

    async def reserve_account(self) -> None:
        """Per phone number, from every client: PIN lock, and the password-failure window."""
        assert self.method is not None
        reason = "pin_locked" if self.method == "pin" else "account_locked"
        refusal = self.event(reason)
        try:
            decision = await self.limiter.reserve_account(
                self.phone_number,
                self.method,
                refusal_event=encode_event(refusal),
                known_client=self.client_key if self.method == "password" else None,
            )
        except LimiterUnavailable:
            if not self.fail_open:
                await self._release_client()
                await self.refuse_unavailable()
                raise
            logger.warning("rate limiter unavailable; per-account limit skipped (RATE_LIMIT_FAIL_OPEN)")
            return
        if decision.allowed:
            self.account_reservation = decision.reservation
            return
        # The refusal event went out with the refusal (or, its stream full, goes to Postgres now); the
        # client's slot was never used.
        if decision.event_queued:
            self.publisher.metrics.events_published.inc()
        else:
            await self.publisher.store_directly(refusal, backlog_full=True)
        self.recorded = True
        await self._release_client()
        if self.method == "pin":
            raise PinLocked(headers=self.headers())
        raise AccountLocked(
            f"{AccountLocked.cause} {try_again_in(decision.retry_after)}",
            headers={**self.headers(), "Retry-After": str(decision.retry_after)},
            extra={"retry_after": decision.retry_after},
        )

    async def finish(self, *, success: bool, reason: str, user_id: int | None = None) -> None:
        """Settle both budgets and publish the event, in one round trip; Postgres if Redis fails."""
        event = self.event(reason, success=success, user_id=user_id)
        try:
            queued = await self.limiter.settle_login(
                self.client_reservation,
                self.account_reservation,
                self.method or "password",
                success,
                encode_event(event),
                remember=(self.phone_number, self.client_key) if success else None,
            )
        except LimiterUnavailable:
            await self.publisher.store_directly(event)
        else:
            if queued:
                self.publisher.metrics.events_published.inc()  # the settle script appended it
            else:
                await self.publisher.store_directly(event, backlog_full=True)
        self.recorded = True

    async def record_unfinished(self, reason: str = "invalid_request", user_id: int | None = None) -> None:
        """No sign-in came of it (bad request, error, ``busy``, no session stored): slots back, record kept."""
        if self.recorded:
            return
        event = self.event(reason, user_id=user_id)
        try:
            if self.client_reservation is not None:
                if await self.limiter.settle(self.client_reservation, "release", encode_event(event)):
                    self.publisher.metrics.events_published.inc()
                else:
                    await self.publisher.store_directly(event, backlog_full=True)
            else:
                await self.publisher.publish(event, self.client_key)
            if self.account_reservation is not None:
                await self.limiter.settle(self.account_reservation, "release")
        except LimiterUnavailable:
            await self.publisher.store_directly(event)
        self.recorded = True

    async def refuse_unavailable(self) -> None:
        """Fail closed: no budget, no login; the attempt still reaches the audit table through Postgres."""
        try:
            await self.publisher.store_directly(self.event("limiter_unavailable"))
        except AuditUnavailable:
            logger.error("login attempt could not be audited: Redis and Postgres both refused it")
        self.recorded = True

    async def _release_client(self) -> None:
        if self.client_reservation is None:
            return
        try:
            await self.limiter.settle(self.client_reservation, "release")
        except LimiterUnavailable:
            logger.warning("could not release a login reservation; it expires by itself")
