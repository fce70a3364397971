"""Attacks on rotations committed in batches (app/sessions/direct.py): one request's trouble is its own.

A batch of rotations is one statement and one transaction for every client whose refresh arrived
while the previous batch was in flight. Whatever one of them brings (a token of an ended session,
a token presented twice, a reused one), the others' rotations must neither fail nor change hands.

The requests really overlap: the app runs in the test's own event loop (``tests/asgi.py``). To put
chosen requests into one batch, a first rotation is held on a row lock taken here; the requests
sent meanwhile wait and then go together as the next batch (``max_in_flight=1``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from sqlalchemy import delete

from app.core.settings import Settings
from app.db.models import Session
from app.sessions.service import SessionService
from app.sessions.tokens import token_digest
from tests.asgi import in_loop_client
from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, new_phone, registered


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with in_loop_client(app) as concurrent:
        yield concurrent


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, register_limit=100_000)


async def session_of(db: asyncpg.Connection, refresh_token: str) -> uuid.UUID:
    found: uuid.UUID = await db.fetchval(
        "SELECT session_id FROM refresh_tokens WHERE token_hash = $1", token_digest(refresh_token)
    )
    return found


async def waiting_on_a_lock(db: asyncpg.Connection, at_least: int) -> None:
    """Until ``at_least`` backends of this database wait for a lock (the statements under test are sent)."""
    for _ in range(500):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} statements came to wait for a lock")


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


class HeldBatch:
    """Rotations sent while the first batch (``holder``'s) waits on a row lock go as one batch when it is let go."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, holder: str) -> None:
        self.client, self.settings, self.db, self.holder = client, settings, db, holder

    async def __aenter__(self) -> HeldBatch:
        self.held = await asyncpg.connect(plain_dsn(self.settings))
        self.held_tx = self.held.transaction()
        await self.held_tx.start()
        await self.held.execute(
            "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", await session_of(self.db, self.holder)
        )
        self.first = asyncio.ensure_future(refresh(self.client, self.holder))
        await waiting_on_a_lock(self.db, 1)
        return self

    async def release(self) -> None:
        await asyncio.sleep(0.2)  # every request sent meanwhile waits behind the first batch
        await self.held_tx.commit()
        await self.held.close()
        assert (await self.first).status_code == 200

    async def __aexit__(self, *exc: object) -> None:
        if not self.held.is_closed():
            await self.held_tx.rollback()
            await self.held.close()


async def one_batch(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, tokens: list[str]
) -> list[httpx.Response]:
    """``tokens`` rotated in one batch (each a request of its own)."""
    holder = await registered(client, phone_number=new_phone())
    async with HeldBatch(client, settings, db, holder["refresh_token"]) as held:
        answers = asyncio.gather(*(refresh(client, token) for token in tokens))
        await held.release()
        return list(await answers)


async def test_a_deletion_never_makes_a_bystanders_rotation_fail(
    client: httpx.AsyncClient, app: Litestar, settings: Settings, db: asyncpg.Connection
) -> None:
    """Found: a batch locked the rows of ended sessions too. An account deletion locks the live
    sessions (the ending, in id order) and then deletes every session of the account, ended ones
    included: a batch holding an ended session of that account and waiting for a live one deadlocked
    with it, and the batch, the first to wait, was the victim: every client in it, other accounts'
    included, got a 500."""
    phone = new_phone()
    first = await registered(client, phone_number=phone)
    second = (await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})).json()
    by_session = {await session_of(db, t["refresh_token"]): t["refresh_token"] for t in (first, second)}
    ended_id, live_id = sorted(by_session)  # the ended one first in id order, as a batch locks them
    logged_out = await client.post("/api/auth/logout", json={"refresh_token": by_session[ended_id]})
    assert logged_out.status_code == 200, logged_out.text
    bystander = await registered(client, phone_number=new_phone())
    holder = await registered(client, phone_number=new_phone())

    held = await asyncpg.connect(plain_dsn(settings))
    held_tx = held.transaction()
    await held_tx.start()
    await held.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", await session_of(db, holder["refresh_token"]))
    first_batch = asyncio.ensure_future(refresh(client, holder["refresh_token"]))
    await waiting_on_a_lock(db, 1)

    async with app.state.db_config.get_session() as deletion:
        # What AdminService.delete_user does, in its order: end every live session, then erase (delete them all).
        await SessionService(deletion, None, settings).end_all(first["user_id"], "deleted", announce=False)
        batch = asyncio.gather(
            *(
                refresh(client, token)
                for token in (by_session[ended_id], by_session[live_id], bystander["refresh_token"])
            )
        )
        await asyncio.sleep(0.2)  # all three wait behind the first batch
        await held_tx.commit()
        await held.close()
        await waiting_on_a_lock(db, 1)  # the batch waits for the live session the deletion holds
        try:
            await deletion.execute(delete(Session).where(Session.user_id == first["user_id"]))
            await deletion.commit()
        except Exception as exc:  # the deletion as the victim: it answers 503 and is retried
            assert "deadlock" in str(exc), exc
        answers = await batch
    assert (await first_batch).status_code == 200
    ended_answer, live_answer, bystander_answer = answers
    assert bystander_answer.status_code == 200, bystander_answer.text
    assert {ended_answer.status_code, live_answer.status_code} <= {401}, (ended_answer.text, live_answer.text)


async def a_real_deadlock(settings: Settings) -> asyncpg.DeadlockDetectedError:
    """Postgres's own "deadlock detected", as asyncpg raises it on the paths without the ORM."""
    first, second = await asyncpg.connect(plain_dsn(settings)), await asyncpg.connect(plain_dsn(settings))
    try:
        async with first.transaction(), second.transaction():
            await first.execute("SELECT pg_advisory_xact_lock(4242001)")
            await second.execute("SELECT pg_advisory_xact_lock(4242002)")
            crossed = await asyncio.gather(
                first.execute("SELECT pg_advisory_xact_lock(4242002)"),
                second.execute("SELECT pg_advisory_xact_lock(4242001)"),
                return_exceptions=True,
            )
            victim = next(error for error in crossed if isinstance(error, BaseException))
            assert isinstance(victim, asyncpg.DeadlockDetectedError), victim
            raise victim
    except asyncpg.DeadlockDetectedError as exc:
        return exc
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow  # Postgres finds the deadlock after deadlock_timeout (1 s)
async def test_a_deadlock_victim_without_the_orm_is_told_to_retry(settings: Settings) -> None:
    """Found: the ORM's deadlock victims answered 503 ``busy`` with Retry-After, but asyncpg's own
    error (the batched statements of app/sessions/direct.py) fell through to the 500 handler: every
    client of a batch that lost a deadlock was told "something went wrong on our side"."""
    from litestar import Request

    from app.core.errors import EXCEPTION_HANDLERS

    deadlock = await a_real_deadlock(settings)
    handler = next(EXCEPTION_HANDLERS[kind] for kind in type(deadlock).__mro__ if kind in EXCEPTION_HANDLERS)
    scope: Any = {"type": "http", "method": "POST", "path": "/api/auth/refresh", "headers": [], "query_string": b""}
    answer = handler(Request(scope), deadlock)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"


def claims_of(answer: httpx.Response) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    return payload


async def test_every_client_of_a_batch_gets_its_own_sessions_tokens(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection
) -> None:
    """No cross-talk: a batch holding several sessions, one token twice, and tokens that find nothing
    (made up, of an ended session) hands each client tokens of the session it presented."""
    accounts = [await registered(client, phone_number=new_phone()) for _ in range(4)]
    ended = await registered(client, phone_number=new_phone())
    assert (await client.post("/api/auth/logout", json={"refresh_token": ended["refresh_token"]})).status_code == 200
    presented = [
        accounts[0]["refresh_token"],
        "rt_" + accounts[1]["refresh_token"][3:-1] + "x",  # a made-up token sharing another's prefix
        accounts[1]["refresh_token"],
        ended["refresh_token"],
        accounts[2]["refresh_token"],
        accounts[0]["refresh_token"],  # the same token twice (the field client's parallel refreshes)
        accounts[3]["refresh_token"],
    ]
    answers = await one_batch(client, settings, db, presented)
    assert [answer.status_code for answer in answers] == [200, 401, 200, 401, 200, 200, 200]
    for token, answer in zip(presented, answers, strict=True):
        if answer.status_code != 200:
            continue
        session_id = await session_of(db, token)
        assert await session_of(db, answer.json()["refresh_token"]) == session_id
        assert claims_of(answer)["sid"] == str(session_id)
        owner = await db.fetchval("SELECT user_id FROM sessions WHERE id = $1", session_id)
        assert claims_of(answer)["sub"] == str(owner)
    assert answers[0].json()["refresh_token"] != answers[5].json()["refresh_token"]


@pytest.mark.parametrize("settings", [{"refresh_reuse_grace_seconds": 0}], indirect=True)
@pytest.mark.parametrize("reuse_first", [True, False])
async def test_a_reused_token_in_the_same_batch_as_the_current_one_ends_the_session(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, reuse_first: bool
) -> None:
    """The thief's replaced token and the owner's current one in one batch: the session ends, and
    nothing either was handed works afterwards."""
    account = await registered(client, phone_number=new_phone())
    replaced = account["refresh_token"]
    rotated = await refresh(client, replaced)
    assert rotated.status_code == 200, rotated.text
    current = rotated.json()["refresh_token"]
    tokens = [replaced, current] if reuse_first else [current, replaced]
    answers = dict(zip(tokens, await one_batch(client, settings, db, tokens), strict=True))
    assert answers[replaced].status_code == 401
    assert answers[replaced].json()["code"] == "refresh_token_reused"
    assert answers[current].status_code in (200, 401)
    reason = await db.fetchval("SELECT end_reason FROM sessions WHERE id = $1", await session_of(db, current))
    assert reason == "reuse_detected"
    if answers[current].status_code == 200:
        handed = answers[current].json()
        assert (await refresh(client, handed["refresh_token"])).status_code == 401
        profile = await client.get("/api/auth/profile", headers={"Authorization": f"Bearer {handed['access_token']}"})
        assert profile.status_code == 401


async def test_a_batch_of_signed_in_checks_answers_each_client_about_itself(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Signed-in checks asked together, some of ended sessions, a deactivated and a deleted account's:
    each live one gets its own profile, every other a 401, none a 500, in every order."""
    live = [await registered(client, phone_number=new_phone()) for _ in range(4)]
    ended, deactivated, deleted = [await registered(client, phone_number=new_phone()) for _ in range(3)]
    assert (await client.post("/api/auth/logout", json={"refresh_token": ended["refresh_token"]})).status_code == 200
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", deactivated["user_id"])
    await db.execute("DELETE FROM users WHERE id = $1", deleted["user_id"])
    everyone = [*live, ended, deactivated, deleted]
    for shift in range(len(everyone)):
        order = everyone[shift:] + everyone[:shift]
        answers = await asyncio.gather(
            *(
                client.get("/api/auth/profile", headers={"Authorization": f"Bearer {account['access_token']}"})
                for account in order * 3
            )
        )
        for account, answer in zip(order * 3, answers, strict=True):
            if account in live:
                assert answer.status_code == 200, answer.text
                assert answer.json()["user"]["id"] == account["user_id"]
            else:
                assert answer.status_code == 401, answer.text
