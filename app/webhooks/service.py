"""Endpoints and their deliveries, as the CLI manages them: add, list, remove, replay, dead letters.

Every method works on the caller's session and commits (a CLI command is one unit of work).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import urlsplit

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import delete, select, text

from app.db.models import AccountEvent, WebhookDelivery, WebhookEndpoint
from app.events.outbox import EventType
from app.webhooks.sealing import new_secret, seal

EVENT_TYPES: tuple[str, ...] = get_args(EventType)
ALL_TYPES = "*"


class WebhookInputError(ValueError):
    """A URL, an event type list or a replay point the service refuses; the message says why."""


def parse_event_types(value: str) -> list[str]:
    """``account.updated,account.deleted`` or ``*`` (every type, those added later included)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == [ALL_TYPES]:
        return names
    unknown = [name for name in names if name not in EVENT_TYPES]
    if not names or unknown:
        raise WebhookInputError(
            f"unknown event type {', '.join(unknown) or '(none given)'}; known: {', '.join(EVENT_TYPES)}, or * for all"
        )
    return list(dict.fromkeys(names))


def check_url(url: str, *, production: bool) -> str:
    """An absolute http(s) URL with a host and no credentials in it; https only in production."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise WebhookInputError("URL must be an absolute http:// or https:// URL (at most 2048 characters)")
    if parts.username or parts.password:
        raise WebhookInputError("URL must not carry credentials: the signature authenticates the sender")
    if production and parts.scheme != "https":
        raise WebhookInputError("URL must be https when APP_ENV=production")
    return url


def parse_since(value: str) -> datetime.datetime | uuid.UUID:
    """An event id (UUID) or an ISO-8601 time (UTC when it names no zone)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise WebhookInputError("--since takes an event id or an ISO-8601 time, e.g. 2026-12-05T07:00:00Z") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class DeadLetter:
    endpoint_id: int
    event_id: uuid.UUID
    user_id: int
    seq: int
    type: str | None  # None: the event was pruned since
    attempts: int
    last_error: str | None
    finished_at: datetime.datetime


class WebhookService(SQLAlchemyAsyncRepositoryService[WebhookEndpoint]):
    class Repo(SQLAlchemyAsyncRepository[WebhookEndpoint]):
        model_type = WebhookEndpoint

    repository_type = Repo

    async def add(self, url: str, event_types: list[str], key_secret: str) -> tuple[WebhookEndpoint, str]:
        """Register ``url``; the endpoint and its secret (returned only here: it is stored encrypted)."""
        secret = new_secret()
        endpoint = await self.create(
            WebhookEndpoint(url=url, event_types=event_types, secret=b""), auto_commit=False, auto_refresh=True
        )
        endpoint.secret = seal(secret, endpoint.id, key_secret)
        await self.repository.session.commit()
        return endpoint, secret

    async def endpoints(self) -> Sequence[WebhookEndpoint]:
        return await self.get_many(order_by=[(WebhookEndpoint.id, False)])

    async def remove(self, endpoint_id: int) -> bool:
        """Delete the endpoint and its deliveries (pending ones are never sent)."""
        session = self.repository.session
        result = await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
        await session.commit()
        return bool(result.rowcount)

    async def replay(self, endpoint_id: int, since: datetime.datetime | uuid.UUID, *, dead_only: bool = False) -> int:
        """Deliver again every event from ``since`` (a time, or an event id and the events after it) that
        the endpoint wants; ``dead_only``: only those that were dead-lettered. How many were queued.

        Each goes out once more with a fresh count of attempts, in order per user (the deliverer sends a
        user's lowest pending ``seq`` first); events older than the outbox's retention are gone.
        """
        session = self.repository.session
        endpoint = await self.get_one_or_none(id=endpoint_id)
        if endpoint is None:
            raise WebhookInputError(f"no webhook endpoint {endpoint_id}")
        if isinstance(since, uuid.UUID):
            start = await session.scalar(select(AccountEvent.created_at).where(AccountEvent.id == since))
            if start is None:
                raise WebhookInputError(f"no event {since} (unknown, or pruned after the retention)")
        else:
            start = since
        query = _REPLAY_DEAD if dead_only else _REPLAY
        result = await session.execute(query, {"endpoint_id": endpoint_id, "since": start})
        await session.commit()
        return len(result.all())

    async def dead_letters(self, endpoint_id: int | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest dead-lettered deliveries (of one endpoint, or of all)."""
        query = (
            select(
                WebhookDelivery.endpoint_id,
                WebhookDelivery.event_id,
                WebhookDelivery.user_id,
                WebhookDelivery.seq,
                AccountEvent.type,
                WebhookDelivery.attempts,
                WebhookDelivery.last_error,
                WebhookDelivery.finished_at,
            )
            .outerjoin(AccountEvent, AccountEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.status == "dead")
            .order_by(WebhookDelivery.finished_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        rows: Any = (await self.repository.session.execute(query)).all()
        return [DeadLetter(*row) for row in rows]


_WANTED = "(e.type = ANY(w.event_types) OR '*' = ANY(w.event_types))"
_REPLAY = text(
    f"""
INSERT INTO webhook_deliveries (endpoint_id, event_id, user_id, seq)
SELECT w.id, e.id, e.user_id, e.seq
FROM account_events e JOIN webhook_endpoints w ON w.id = :endpoint_id AND {_WANTED}
WHERE e.created_at >= :since
ON CONFLICT (endpoint_id, event_id) DO UPDATE
SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, finished_at = NULL
RETURNING 1
"""  # noqa: S608 - constant fragments
)
_REPLAY_DEAD = text(
    """
UPDATE webhook_deliveries d
SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, finished_at = NULL
FROM account_events e
WHERE d.endpoint_id = :endpoint_id AND d.status = 'dead' AND e.id = d.event_id AND e.created_at >= :since
RETURNING 1
"""
)
