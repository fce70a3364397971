"""A sign-in is a success only once its session is stored (issue 22, item 5).

The attempt used to be settled as a success (audit row ``success=true``, the client remembered as
known to the number, the event published) before the session was written; when writing it failed,
the client got a 500 and the audit trail a sign-in that never happened. Here Postgres itself refuses
the session (a trigger raises on insert into ``sessions``), after the password was verified.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from tests.helpers import STRONG_PASSWORD, e164, new_phone, registered

REFUSE_SESSIONS = """
CREATE FUNCTION refuse_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'sessions refused by the test'; END $$;
CREATE TRIGGER refuse_session BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION refuse_session();
"""
ALLOW_SESSIONS = "DROP TRIGGER refuse_session ON sessions; DROP FUNCTION refuse_session();"


async def audit_rows(db: Any, phone: str, count: int) -> list[Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = await db.fetch(
            "SELECT success, reason, user_id FROM login_attempts WHERE phone_number = $1 ORDER BY created_at", phone
        )
        if len(rows) >= count:
            return list(rows)
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} audit rows for {phone}")


async def test_a_sign_in_whose_session_is_not_stored_is_no_success(client: Any, db: Any, settings: Settings) -> None:
    phone = new_phone()
    account = await registered(client, phone_number=phone)
    await db.execute(REFUSE_SESSIONS)
    try:
        answer = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    finally:
        await db.execute(ALLOW_SESSIONS)
    assert answer.status_code >= 500 and "access_token" not in answer.text
    assert answer.json()["code"] and answer.json()["message"]

    (row,) = await audit_rows(db, e164(phone), 1)
    assert (row["success"], row["reason"], row["user_id"]) == (False, "session_not_stored", account["user_id"])
    redis = create_redis(settings)
    known = KeySpace(settings.redis_key_prefix, settings.redis_shards).phone(e164(phone), "known")
    try:
        assert await redis.zcard(known) == 0  # the client was not remembered as known to the number

        # With sessions stored again, the same sign-in works, is the success it says, and is remembered.
        again = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
        assert again.status_code == 200, again.text
        rows = await audit_rows(db, e164(phone), 2)
        assert (rows[-1]["success"], rows[-1]["reason"]) == (True, "ok")
        assert await redis.zcard(known) == 1
    finally:
        await redis.aclose()
