"""One page of login attempts, newest first, as the API and ``audit query --json`` show it."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from app.audit.history.cursor import Cursor
from app.audit.history.filters import PageRequest
from app.audit.history.sql import page_sql

Outcome = Literal["success", "failure", "refusal"]

# The service refused to check the credential (budget spent, locked, limiter down). Every other
# unsuccessful attempt is a failure, ``invalid_request`` included: the client did try to sign in,
# and attack tools send malformed requests too.
REFUSAL_REASONS = ("rate_limited", "account_locked", "pin_locked", "limiter_unavailable", "session_locked")


def outcome_of(success: bool, reason: str) -> Outcome:
    if success:
        return "success"
    return "refusal" if reason in REFUSAL_REASONS else "failure"


class AttemptView(msgspec.Struct, kw_only=True):
    """One login attempt as the API and ``audit query --json`` show it."""

    id: int
    event_id: uuid.UUID
    created_at: datetime.datetime
    phone_number: str
    user_id: int | None
    success: bool
    outcome: Outcome
    reason: str
    auth_method: str | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    channel: str
    session_id: str | None
    service_name: str | None


class AttemptPage(msgspec.Struct, kw_only=True):
    items: list[AttemptView]
    next_cursor: str | None


def _view(row: Mapping[str, Any]) -> AttemptView:
    return AttemptView(
        id=row["id"],
        event_id=row["event_id"],
        created_at=row["created_at"],
        phone_number=row["phone_number"],
        user_id=row["user_id"],
        success=row["success"],
        outcome=outcome_of(row["success"], row["reason"]),
        reason=row["reason"],
        auth_method=row["auth_method"],
        ip_address=row["ip_address"],
        user_agent=row["user_agent"],
        request_id=row["request_id"],
        channel=row["channel"],
        session_id=row["session_id"],
        service_name=row["service_name"],
    )


async def fetch_page(conn: Any, request: PageRequest) -> AttemptPage:
    """One page of attempts, newest first, on an asyncpg connection."""
    sql, args = page_sql(request)
    rows = await conn.fetch(sql, *args)
    items = [_view(row) for row in rows[: request.limit]]
    next_cursor = None
    if len(rows) > request.limit:
        last = items[-1]
        next_cursor = Cursor.after(last.created_at, last.id).encode()
    return AttemptPage(items=items, next_cursor=next_cursor)
