"""Small helpers shared by the integration tests."""

from __future__ import annotations

import itertools
from typing import Any

from httpx import Response

# True when login_attempts_hourly holds exactly a GROUP BY over login_attempts (empty hours aside).
ROLLUPS_EQUAL_ROWS = """
SELECT (SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM (
            SELECT date_trunc('hour', created_at, 'UTC') AS hour, success, reason, channel, count(*) AS attempts
            FROM login_attempts GROUP BY 1, 2, 3, 4) r)
     = (SELECT coalesce(array_agg(h ORDER BY h), '{}') FROM (
            SELECT hour, success, reason, channel, attempts FROM login_attempts_hourly WHERE attempts > 0) h)
"""

STRONG_PASSWORD = "Umuganda-Kigali-42"
OTHER_PASSWORD = "Ibiyaga-Bigari-2025"
GOOD_PIN = "4827"
_phones = itertools.count(1000)


def new_phone() -> str:
    """A distinct valid Rwandan mobile number in the local form clients send."""
    return f"078{next(_phones):07d}"


def e164(local: str) -> str:
    return "+250" + local.lstrip("0")


async def register(client: Any, **fields: Any) -> Response:
    body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, "user_type": "adolescent"}
    body.update(fields)
    body = {key: value for key, value in body.items() if value is not None}
    return await client.post("/api/auth/register", json=body)


async def registered(client: Any, **fields: Any) -> dict[str, Any]:
    response = await register(client, **fields)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
