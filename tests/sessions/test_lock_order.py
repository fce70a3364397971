"""No 500 from lock conflicts (issue 21, finding 9).

Issuing a recovery code while the account's session refreshed failed with "deadlock detected", and
refresh answered 500: the two took the user row and the token rows in opposite orders. Every path
now takes them in one order (users, sessions, refresh_tokens), so a storm of refreshes of both forms
racing recovery codes, logout-all, a password change and deactivation answers only 200, 401 or 404.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import msgspec
import pytest

from app.core.settings import Settings
from tests.admin.support import account_of_kind
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

ROUNDS = 15
_passwords = itertools.count()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, register_limit=100_000)


async def sign_in(client: Any, phone: str, password: str) -> dict[str, Any]:
    answer = await client.post("/api/auth/login", json={"phone_number": phone, "password": password})
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


async def test_refreshes_racing_every_ending_never_deadlock(client: Any, db: Any) -> None:
    admin, _ = await account_of_kind(client, db, "role_admin")
    statuses: Counter[int] = Counter()
    for round_number in range(ROUNDS):
        phone = new_phone()
        account = await registered(client, phone_number=phone)
        user_id = account["user_id"]
        other = await sign_in(client, phone, STRONG_PASSWORD)
        refreshes = [
            client.post("/api/auth/refresh", json={"refresh_token": token})
            for token in (account["refresh_token"], other["refresh_token"])
            for _ in range(4)
        ] + [
            client.post("/api/auth/refresh", headers=bearer(token))
            for token in (account["refresh_token"], other["refresh_token"])
            for _ in range(4)
        ]
        endings = [
            client.post(f"/api/admin/users/{user_id}/recovery", headers=admin),
            client.post("/api/auth/logout-all", headers=bearer(account["access_token"])),
            client.put(
                "/api/auth/profile",
                headers=bearer(other["access_token"]),
                json={"current_password": STRONG_PASSWORD, "new_password": f"Akagera-Park-{next(_passwords)}x"},
            ),
        ]
        if round_number % 3 == 0:
            endings.append(client.patch(f"/api/admin/users/{user_id}/toggle-status", headers=admin))
        answers = await asyncio.gather(*refreshes, *endings)
        statuses.update(answer.status_code for answer in answers)
        broken = [(answer.status_code, answer.text) for answer in answers if answer.status_code >= 500]
        assert broken == [], f"round {round_number}: {broken}"
    assert set(statuses) <= {200, 401, 403, 404}, statuses
