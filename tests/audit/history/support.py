"""Helpers for the audit query tests: rows written straight into login_attempts, staff accounts."""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.audit.pipeline.store import COLUMNS, add_to_rollups
from tests.helpers import bearer, registered

BASE_TIME = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC)


@dataclass
class Row:
    """One login_attempts row as a test writes it; ``id`` is filled in after the insert."""

    created_at: datetime.datetime = BASE_TIME
    phone_number: str = "+250788000001"
    success: bool = False
    reason: str = "invalid_credentials"
    auth_method: str | None = "password"
    user_id: int | None = None
    ip_address: str | None = "41.186.1.2"
    user_agent: str | None = "okhttp/4.12.0"
    request_id: str | None = None
    channel: str = "http"
    session_id: str | None = None
    service_name: str | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    id: int | None = None

    def record(self) -> tuple[Any, ...]:
        ip = ipaddress.ip_address(self.ip_address) if self.ip_address is not None else None
        return (
            self.event_id,
            self.created_at,
            self.phone_number,
            self.user_id,
            self.success,
            self.auth_method,
            self.reason,
            ip,
            self.user_agent,
            self.request_id,
            self.channel,
            self.session_id,
            self.service_name,
        )


async def insert_rows(conn: Any, rows: list[Row]) -> list[Row]:
    """COPY ``rows`` in, counted into the rollups as the writer does, and fill in their ids
    (in list order: the identity follows COPY order)."""
    if not rows:
        return rows
    async with conn.transaction():
        await conn.copy_records_to_table("login_attempts", records=[row.record() for row in rows], columns=COLUMNS)
        await add_to_rollups(conn, rows)  # type: ignore[arg-type]
    ids = await conn.fetch(
        "SELECT id, event_id FROM login_attempts WHERE event_id = ANY($1::uuid[])", [row.event_id for row in rows]
    )
    by_event = {record["event_id"]: record["id"] for record in ids}
    for row in rows:
        row.id = by_event[row.event_id]
    return rows


async def staff_token(client: Any, db: Any, role: str) -> tuple[str, dict[str, Any]]:
    """Register an account through the API, give it ``role``, return its access token and account."""
    account = await registered(client)
    await db.execute("UPDATE users SET role = $1 WHERE id = $2", role, account["user_id"])
    return account["access_token"], account


async def staff_headers(client: Any, db: Any, role: str) -> dict[str, str]:
    token, _ = await staff_token(client, db, role)
    return bearer(token)
