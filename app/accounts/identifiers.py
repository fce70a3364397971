"""Changing an account's email or phone number: limited per account and recorded.

Answering 409 ``email_taken`` / ``phone_number_taken`` tells the asker that another account has the
address, so an unlimited stream of such changes enumerates accounts (issue 17, item 6). Every
attempt to change either identifier takes one hit of the account's ``identifier`` budget
(``PROFILE_IDENTIFIER_CHANGES`` per hour, whatever the answer) and leaves one audit event:
``identifier_changed``, ``identifier_taken`` or ``rate_limited``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.accounts.forms import ProfileChanges
from app.accounts.reauth import RequestOrigin
from app.audit.pipeline.events import new_event
from app.audit.pipeline.publisher import AuditPublisher, AuditUnavailable
from app.core.errors import Conflict, LimiterUnavailable, RateLimited, try_again_in
from app.db.models import User
from app.ratelimit.limiter import LoginLimiter, rate_limit_headers

logger = logging.getLogger(__name__)

IDENTIFIERS = ("email", "phone_number")


def changed_identifiers(changes: ProfileChanges, user: User) -> list[str]:
    return [name for name in IDENTIFIERS if name in changes.fields and changes.fields[name] != getattr(user, name)]


class IdentifierChanges:
    def __init__(self, limiter: LoginLimiter, publisher: AuditPublisher, *, fail_open: bool) -> None:
        self.limiter = limiter
        self.publisher = publisher
        self.fail_open = fail_open

    @asynccontextmanager
    async def attempt(self, user: User, changes: ProfileChanges, origin: RequestOrigin) -> AsyncIterator[None]:
        """Around the change: take the hit first (429 when spent), record how it ended."""
        if not changed_identifiers(changes, user):
            yield
            return
        try:
            decision = await self.limiter.hit_identifier_change(user.id)
        except LimiterUnavailable:
            if not self.fail_open:
                raise
            decision = None
        if decision is not None and not decision.allowed:
            await self._record(user, origin, "rate_limited", success=False)
            raise RateLimited(
                f"Too many changes of your email or phone number. {try_again_in(decision.retry_after)}",
                headers={"Retry-After": str(decision.retry_after), **rate_limit_headers("identifier", decision)},
                extra={"retry_after": decision.retry_after},
            )
        try:
            yield
        except Conflict:
            await self._record(user, origin, "identifier_taken", success=False)
            raise
        await self._record(user, origin, "identifier_changed", success=True)

    async def _record(self, user: User, origin: RequestOrigin, reason: str, *, success: bool) -> None:
        event = new_event(
            phone_number=user.phone_number or "",
            success=success,
            reason=reason,
            user_id=user.id,
            ip_address=origin.ip_address,
            user_agent=origin.user_agent,
            request_id=origin.request_id,
        )
        try:
            await self.publisher.publish(event, f"user:{user.id}")
        except AuditUnavailable:
            logger.error("identifier change of account %s could not be audited", user.id)
