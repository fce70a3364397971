"""A sign-in verified against the old state starts no session (the attacker's pass over issue 21).

The hash is checked with no lock held. A sign-in with the old password that was being verified
while the password was changed (or the account promoted, deactivated, deleted) used to start a live
session after every session had been ended; with a Flask-era bcrypt hash it also wrote a rehash of
the old password back over the new one. Here the ending is made to commit inside that window: the
test holds the account's row, so the sign-in's hash check finishes first and it must wait.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncpg
import bcrypt
import pytest

from app.core.settings import Settings
from tests.admin.support import account_of_kind
from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, e164, new_phone, registered


@pytest.fixture
def dsn(settings: Settings) -> str:
    return plain_dsn(settings)


async def sign_in(client: Any, phone: str, password: str) -> Any:
    return await client.post("/api/auth/login", json={"phone_number": phone, "password": password})


class RowHolder(threading.Thread):
    """Another client of Postgres, on a thread of its own (the test client blocks this thread while
    a request runs): takes the account's row, waits, applies ``ending`` and commits."""

    def __init__(self, dsn: str, user_id: int, ending: str, hold_seconds: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.dsn, self.user_id, self.ending, self.hold_seconds = dsn, user_id, ending, hold_seconds
        self.holding = threading.Event()

    def run(self) -> None:
        asyncio.run(self._hold())

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", self.user_id)
                self.holding.set()
                await asyncio.sleep(self.hold_seconds)  # the sign-in's hash check ends; it now waits on the row
                await conn.execute(self.ending, self.user_id)
        finally:
            await conn.close()


async def race(client: Any, dsn: str, user_id: int, phone: str, ending: str) -> Any:
    """The sign-in verifies while the ending holds the account's row, then waits for it to commit."""
    holder = RowHolder(dsn, user_id, ending)
    holder.start()
    assert await asyncio.to_thread(holder.holding.wait, 10)
    answer = await sign_in(client, phone, STRONG_PASSWORD)
    await asyncio.to_thread(holder.join, 10)
    return answer


ENDINGS = {
    "password change": "UPDATE users SET password_hash = 'changed-meanwhile' WHERE id = $1",
    "deactivation": "UPDATE users SET is_active = false WHERE id = $1",
    "deletion": "UPDATE users SET deleted_at = now(), password_hash = '!' WHERE id = $1",
    # A credential too (it ends the other sessions): a sign-in with the number the account no longer has
    # started a session after that ending (found by the attacker's pass over issue 25).
    "phone number change": "UPDATE users SET phone_number = '+25078' || lpad(id::text, 7, '9') WHERE id = $1",
}


async def test_a_sign_in_verified_before_an_ending_starts_no_session(client: Any, db: Any, dsn: str) -> None:
    for name, ending in ENDINGS.items():
        phone = new_phone()
        account = await registered(client, phone_number=phone)
        answer = await race(client, dsn, account["user_id"], phone, ending)
        assert answer.status_code == 401, (name, answer.text)
        live = await db.fetchval(
            "SELECT count(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL", account["user_id"]
        )
        assert live == 1, name  # only the registration's own session, which the ending would end


async def test_a_rehash_of_the_old_password_never_overwrites_a_new_one(client: Any, db: Any, dsn: str) -> None:
    """A Flask-era bcrypt hash is upgraded at sign-in: only if it is still the hash that was verified."""
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    flask_era = bcrypt.hashpw(STRONG_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    await db.execute("UPDATE users SET password_hash = $1 WHERE id = $2", flask_era, account["user_id"])
    answer = await race(client, dsn, account["user_id"], phone, ENDINGS["password change"])
    assert answer.status_code == 401, answer.text
    stored = await db.fetchval("SELECT password_hash FROM users WHERE phone_number = $1", e164(phone))
    assert stored == "changed-meanwhile"


async def test_promotion_racing_a_sign_in_leaves_no_staff_session(client: Any, db: Any, dsn: str) -> None:
    """``--promote`` sets the operator's password and ends every session; a racing sign-in gets neither."""
    admin, _ = await account_of_kind(client, db, "role_admin")
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    promote = "UPDATE users SET role = 'admin', password_hash = 'set-by-the-operator' WHERE id = $1"
    answer = await race(client, dsn, account["user_id"], phone, promote)
    assert answer.status_code == 401, answer.text
    assert (await client.get("/api/admin/users", headers=admin)).status_code == 200
