"""The outbox of account changes: one ``account_events`` row per change, in the change's transaction.

Whatever changes an account records the event on the session that makes the change, so the event
commits or rolls back with it; the relay (``relay.py``) publishes committed rows to the
``accounts`` stream. docs/account-events.md is the consumers' side.

Sequence numbers: ``UPDATE users SET event_seq = event_seq + 1 ... RETURNING`` takes the user's row
lock until the transaction ends, so a second change of the same account waits for the first to
commit (or roll back, which undoes its bump) before it gets the next number. Per user the numbers
are 1, 2, 3... without gaps or repeats, in commit order. ``SELECT max(seq) ... FOR UPDATE`` would
not do: it locks nothing before a user's first event, and pruning old rows would restart the count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from app.db.models import AccountEvent, User

EventType = Literal[
    "account.registered",
    "account.imported",
    "account.updated",
    "account.credentials_changed",
    "account.sessions_revoked",
    "account.deactivated",
    "account.role_changed",
    "account.deleted",
]

# The columns an event may name and carry, and nothing else: never a hash or a secret, and no
# column added to ``users`` later reaches the platform without being listed here first.
PROFILE_FIELDS = (
    "name",
    "phone_number",
    "email",
    "user_type",
    "date_of_birth",
    "account_type",
    "is_phone_verified",
    "enable_pin_auth",
    "personal_cycle_length",
    "personal_period_length",
    "has_provided_cycle_info",
    "session_timeout_minutes",
    "allow_parent_access",
    "data_sharing_consent",
    "notification_preferences",
)
# What a new account's event carries: who the platform must create its parents/adolescents row for.
NEW_ACCOUNT_FIELDS = ("name", "phone_number", "email", "user_type", "role", "date_of_birth", "is_active")
# What an erased account's earlier events keep: words about the change that name nobody (why, which
# credential, which role). Everything else of their payloads goes (``AccountEventService.scrub``).
KEPT_WHEN_ERASED = ("reason", "credentials", "role", "previous_role", "source")
# Columns whose change is a credential change, and the name the event gives it (never the value).
CREDENTIAL_COLUMNS = {"password_hash": "password", "pin_hash": "pin", "phone_number": "phone"}


class UnknownAccount(LookupError):
    """An event for a user id that has no row (a caller's bug: the event would have no sequence number)."""


def _jsonable(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Dates and times as ISO-8601 strings, as the stream carries them."""
    converted: dict[str, Any] = msgspec.to_builtins(dict(payload))
    return converted


class AccountEventService(SQLAlchemyAsyncRepositoryService[AccountEvent]):
    """The ``account_events`` table; every method writes on the caller's session and never commits."""

    class Repo(SQLAlchemyAsyncRepository[AccountEvent]):
        model_type = AccountEvent

    repository_type = Repo

    async def record(self, user_id: int, type: EventType, **payload: Any) -> AccountEvent:
        """Write one event of ``user_id`` with the user's next sequence number."""
        session = self.repository.session
        seq = await session.scalar(
            update(User)
            .where(User.id == user_id)
            .values(event_seq=User.event_seq + 1)
            .returning(User.event_seq)
            .execution_options(synchronize_session=False)
        )
        if seq is None:
            raise UnknownAccount(f"no account {user_id} to record {type} for")
        event = AccountEvent(id=uuid7(), user_id=user_id, seq=seq, type=type, payload=_jsonable(payload))
        return await self.create(event, auto_commit=False, auto_refresh=False)

    # ---- one method per kind of change, so each call site is one line --------------------------

    async def registered(self, user: User) -> None:
        await self.record(user.id, "account.registered", **{name: getattr(user, name) for name in NEW_ACCOUNT_FIELDS})

    async def imported(self, user_id: int, profile: Mapping[str, Any], source: str) -> None:
        fields = {name: value for name, value in profile.items() if name in (*NEW_ACCOUNT_FIELDS, *PROFILE_FIELDS)}
        await self.record(user_id, "account.imported", source=source, **fields)

    async def profile_changing(self, user: User, changes: Mapping[str, Any]) -> None:
        """Before ``changes`` (column -> new value) are applied to ``user``: what will differ.

        ``account.updated`` names the profile fields that change and their new values;
        ``account.credentials_changed`` names the credentials that change, without values.
        """
        different = {name: value for name, value in changes.items() if getattr(user, name) != value}
        fields = {name: value for name, value in different.items() if name in PROFILE_FIELDS}
        credentials = [label for column, label in CREDENTIAL_COLUMNS.items() if column in different]
        if fields:
            await self.record(user.id, "account.updated", fields=fields)
        if credentials:
            await self.record(user.id, "account.credentials_changed", credentials=credentials)

    async def sessions_revoked(self, user_id: int, reason: str) -> None:
        await self.record(user_id, "account.sessions_revoked", reason=reason)

    async def deactivated(self, user_id: int, reason: str) -> None:
        await self.record(user_id, "account.deactivated", reason=reason)

    async def role_changed(self, user_id: int, role: str, previous_role: str) -> None:
        await self.record(user_id, "account.role_changed", role=role, previous_role=previous_role)

    async def deleted(self, user_id: int, reason: str) -> None:
        """Call *before* deleting the row (the sequence number lives on it); same transaction."""
        await self.record(user_id, "account.deleted", reason=reason)

    # ---- erasure ----------------------------------------------------------------------------------

    async def phone_numbers(self, user_id: int) -> set[str]:
        """Every number the user's events name (at registration, import or a change): the numbers
        Redis may hold keys for, the current one and earlier ones alike."""
        session = self.repository.session
        payload = AccountEvent.payload
        rows = await session.scalars(
            select(func.coalesce(payload["phone_number"].astext, payload["fields"]["phone_number"].astext)).where(
                AccountEvent.user_id == user_id,
                or_(payload.has_key("phone_number"), payload["fields"].has_key("phone_number")),
            )
        )
        return {number for number in rows if number}

    async def scrub(self, user_id: int) -> int:
        """Strip the user's earlier events down to :data:`KEPT_WHEN_ERASED`, marked ``"erased": true``.

        Type, sequence number and time stay, so consumers still see an unbroken sequence; an
        ``account.updated`` keeps an empty ``fields``. The ``account.deleted`` event is left as it is.
        How many events were scrubbed.
        """
        session = self.repository.session
        result = await session.execute(_SCRUB, {"user_id": user_id, "kept": list(KEPT_WHEN_ERASED)})
        return int(result.rowcount or 0)


_SCRUB = text(
    """
UPDATE account_events
SET payload = coalesce(
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(payload) WHERE key = ANY(CAST(:kept AS text[]))),
        '{}'::jsonb)
    || CASE WHEN payload ? 'fields' THEN '{"fields": {}}'::jsonb ELSE '{}'::jsonb END
    || '{"erased": true}'::jsonb
WHERE user_id = :user_id AND type <> 'account.deleted' AND NOT payload ? 'erased'
"""
)


async def record_imported(
    session: AsyncSession, user_id: int, profile: Mapping[str, Any], *, source: str = "flask"
) -> None:
    """The legacy import's hook: ``account.imported`` for a user it wrote, on its own session."""
    await AccountEventService(session=session).imported(user_id, profile, source)


# The same ``account.imported`` events for a batch the legacy import wrote on a plain asyncpg
# connection: each user's sequence bumped and its event inserted in one statement, in the caller's
# transaction, so an event exists exactly when its account does.
_IMPORTED_BATCH = """
WITH bumped AS (
    UPDATE users SET event_seq = event_seq + 1 WHERE id = ANY($1::bigint[])
    RETURNING id, event_seq, to_jsonb(users) AS row
)
INSERT INTO account_events (id, user_id, seq, type, payload)
SELECT ids.event_id, bumped.id, bumped.event_seq, 'account.imported',
       jsonb_build_object('source', $3::text)
       || coalesce((SELECT jsonb_object_agg(key, value) FROM jsonb_each(bumped.row) WHERE key = ANY($4::text[])), '{}')
FROM bumped JOIN unnest($1::bigint[], $2::uuid[]) AS ids(user_id, event_id) ON ids.user_id = bumped.id
"""


async def record_imported_batch(conn: Any, user_ids: Sequence[int], *, source: str = "flask") -> None:
    """``account.imported`` for every id of ``user_ids`` (asyncpg ``conn``, inside its transaction)."""
    if not user_ids:
        return
    fields = list(dict.fromkeys((*NEW_ACCOUNT_FIELDS, *PROFILE_FIELDS)))
    await conn.execute(_IMPORTED_BATCH, list(user_ids), [uuid7() for _ in user_ids], source, fields)
