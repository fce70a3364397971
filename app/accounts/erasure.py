"""Erasure: deleting an account takes the person out of everything this service keeps but the login history.

Where a person's name, phone number, email, birth date or preferences were, and what deletion does:

- the ``users`` row: the personal columns are emptied; the row stays (its id is the platform's, and
  the login history refers to it);
- ``account_events``: the account's earlier events are scrubbed down to what names nobody
  (``KEPT_WHEN_ERASED``), marked ``"erased": true``; type, sequence number and time stay;
- the ``accounts`` stream: the account's earlier entries are deleted (XDEL), duplicates included;
  ``account.deleted`` tells consumers to erase their copies;
- Redis keys named after a number the account has had (its events name them): the password
  budget, the PIN lock and the known clients of each, built by the limiter's own key builders, so
  they are the keys of the number's hash slot on a Redis Cluster too. The names carry the number
  in clear on purpose: a hash of a phone number is no anonymisation (a numbering plan is small
  enough to hash whole), so the keys are personal data either way, and are deleted;
- ``sessions`` (last address and device of each) and their refresh tokens: deleted, once ended.

- ``audit_queries``: a search of the login history by one of the numbers keeps who searched and
  when, but the number it searched for becomes ``"(erased)"``.

Kept by design: ``login_attempts`` and its hourly rollups, for AUDIT_RETENTION_DAYS, with the
audit streams that carry attempts to it; staff records (``admin_actions``, ``audit_queries``) name
staff and the target's id, never the target's data.

Order: the relays are paused before the payloads are scrubbed, so no batch in flight can append a
payload read before the scrub once the stream is cleaned; Redis is cleaned before the commit, so
when Redis fails the deletion rolls back (503) instead of reporting an erasure that did not happen.
"""

from __future__ import annotations

import contextlib
import logging

import phonenumbers
from redis.exceptions import RedisError
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.service import utcnow
from app.core.errors import UNAVAILABLE_RETRY_AFTER, ServiceUnavailable
from app.core.redis import RedisClient
from app.core.redis_keys import KeySpace
from app.db.models import Session, User
from app.events.outbox import AccountEventService
from app.events.relay import pause_relays, withdraw_entries

logger = logging.getLogger(__name__)

# The limiter's keys of one phone number (app/ratelimit/limiter.py): failed passwords, the PIN, USSD registrations,
# lock, and the clients that signed in to it (addresses, kept for KNOWN_CLIENT_DAYS).
NUMBER_KEYS = ("password", "pin", "known", "ussd_register_number")

ERASED_COLUMNS = {
    "name": "Deleted account",
    "phone_number": None,
    "email": None,
    "password_hash": "!",  # never a valid hash: nothing verifies against it
    "pin_hash": None,
    "enable_pin_auth": False,
    "recovery_hash": None,
    "recovery_expires_at": None,
    "date_of_birth": None,
    "notification_preferences": None,
    "current_session_data": None,
    "personal_cycle_length": None,
    "personal_period_length": None,
    "has_provided_cycle_info": False,
    "is_active": False,
}


# Each top-level filter of the security team's query log that holds one of the numbers, as searched.
ERASE_SEARCHED_NUMBERS = text(
    """
    UPDATE audit_queries
    SET filters = (
        SELECT jsonb_object_agg(key, CASE WHEN value #>> '{}' = ANY(:numbers) THEN '"(erased)"'::jsonb ELSE value END)
        FROM jsonb_each(filters)
    )
    WHERE jsonb_typeof(filters) = 'object'
      AND EXISTS (SELECT 1 FROM jsonb_each(filters) WHERE value #>> '{}' = ANY(:numbers))
    """
)


def spellings(numbers: set[str]) -> set[str]:
    """A number as staff may have typed it: E.164, without the plus, and in its national form."""
    found = set()
    for number in numbers:
        found |= {number, number.lstrip("+")}
        with contextlib.suppress(phonenumbers.NumberParseException):
            parsed = phonenumbers.parse(number)
            found.add("0" + str(parsed.national_number))
    return found


class ErasureUnavailable(ServiceUnavailable):
    code = "erasure_unavailable"
    message = "The account could not be erased right now, so it was not deleted. Please try again in a minute."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})


class AccountEraser:
    """Erases one account in the caller's transaction (the caller has recorded ``account.deleted``)."""

    def __init__(self, session: AsyncSession, redis: RedisClient, keys: KeySpace) -> None:
        self.session = session
        self.redis = redis
        self.keys = keys
        self.events = AccountEventService(session=session)

    async def erase(self, user: User) -> None:
        await pause_relays(self.session)
        numbers = await self.events.phone_numbers(user.id)
        if user.phone_number:
            numbers.add(user.phone_number)
        scrubbed = await self.events.scrub(user.id)
        await self.session.execute(ERASE_SEARCHED_NUMBERS, {"numbers": sorted(spellings(numbers))})
        await self.session.execute(delete(Session).where(Session.user_id == user.id))
        await self.session.execute(
            update(User)
            .where(User.id == user.id)
            .values(**ERASED_COLUMNS, deleted_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        try:
            withdrawn = await erase_from_redis(self.redis, self.keys, user.id, numbers)
        except (RedisError, OSError) as exc:
            logger.warning("erasure of account %s failed at Redis: %s", user.id, exc)
            raise ErasureUnavailable() from exc
        logger.info("account %s erased: %d events scrubbed, %d stream entries withdrawn", user.id, scrubbed, withdrawn)


async def erase_from_redis(redis: RedisClient, keys: KeySpace, user_id: int, numbers: set[str]) -> int:
    """The numbers' limiter keys and the account's stream entries; how many entries were withdrawn."""
    for number in sorted(numbers):  # one DEL per number: its keys share a hash slot
        await redis.delete(*(keys.phone(number, kind) for kind in NUMBER_KEYS))
    return await withdraw_entries(redis, keys.account_events, user_id)
