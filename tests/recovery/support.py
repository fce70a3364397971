"""Helpers of the recovery tests."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from typing import Any

from tests.helpers import bearer
from tests.platform.support import new_credential

_sessions = itertools.count(1)


def new_session() -> str:
    return f"ATUid_rec_{next(_sessions):08d}"


async def gateway_headers(settings: Any) -> dict[str, str]:
    return bearer(await new_credential(settings, f"ussd-gateway-{uuid.uuid4().hex[:8]}", "ussd"))


async def start(client: Any, phone: str, forwarded_for: str | None = None) -> Any:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return await client.post("/api/auth/recovery/start", json={"phone_number": phone}, headers=headers)


async def complete(client: Any, phone: str, code: str, **secret: str) -> Any:
    secret = secret or {"new_password": "Inzira-Nshya-2026"}
    return await client.post("/api/auth/recovery/complete", json={"phone_number": phone, "code": code, **secret})


async def ussd_code(client: Any, gateway: dict[str, str], phone: str) -> Any:
    body = {"phone_number": phone, "session_id": new_session()}
    return await client.post("/api/ussd/recovery-code", json=body, headers=gateway)


def code_in(message: str) -> str:
    digits = re.findall(r"\b\d{6}\b", message)
    assert len(digits) == 1, message
    return str(digits[0])


async def insert_accounts(db: Any, phones: list[str], verified: bool = False) -> None:
    """Accounts straight into the table, for runs of hundreds (registration has its own budgets)."""
    await db.executemany(
        "INSERT INTO users (name, phone_number, password_hash, user_type, is_phone_verified, created_at, updated_at)"
        " VALUES ('Aline Uwase', $1, '!', 'adolescent', $2, now(), now())",
        [(phone, verified) for phone in phones],
    )


async def audit_rows(db: Any, channel: str, count: int) -> list[Any]:
    """The audit rows of ``channel`` once ``count`` have been written (the writer runs in the app)."""
    query = "SELECT * FROM login_attempts WHERE channel = $1 ORDER BY id"
    for _ in range(400):
        if len(await db.fetch(query, channel)) >= count:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything written twice would show up by now
    return list(await db.fetch(query, channel))
