"""Account events: the outbox row in the change's transaction, the relay, and the consumer of docs/account-events.md.

The end-to-end test runs the consumer code of the doc against a Redis server of its own, which
it stops and starts again in the middle (the shared Redis is never restarted).
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text as sa_text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.__main__ import main
from app.accounts.service import AuthService, UserService
from app.asgi import create_app, served
from app.core.embedded import EmbeddedRedis
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import PROJECT_ROOT, Settings
from app.credentials.passwords import Hasher
from app.db.config import sqlalchemy_config
from app.events.outbox import AccountEventService, record_imported
from app.events.relay import EVENT_FIELD, AccountEventRelay
from app.keys.keyring import load_keyring
from app.sessions.service import SessionService
from app.sessions.tokens import TokenIssuer
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, from_loopback
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, registered

DOC = PROJECT_ROOT / "docs" / "account-events.md"
IN_ORDER = ["account.registered", "account.updated", "account.credentials_changed", "account.deactivated"]


def doc_consumer() -> Callable[..., None]:
    """The ``consume`` function exactly as docs/account-events.md prints it."""
    match = re.search(r"<!-- consumer -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/account-events.md lost its consumer block"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    consume: Callable[..., None] = namespace["consume"]
    return consume


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def first_copies(received: list[dict[str, Any]], user_id: int) -> list[dict[str, Any]]:
    """The consumer's rule: an event id seen before is a duplicate."""
    seen: set[str] = set()
    kept = []
    for event in list(received):
        if event["user_id"] == user_id and event["id"] not in seen:
            seen.add(event["id"])
            kept.append(event)
    return kept


def types_of(received: list[dict[str, Any]], user_id: int) -> list[str]:
    return [event["type"] for event in first_copies(received, user_id)]


async def rows_of(db: asyncpg.Connection, user_id: int) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM account_events WHERE user_id = $1 ORDER BY seq", user_id)


def data_of(row: asyncpg.Record) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(row["payload"])
    return payload


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """Server data outside pytest's basetemp, which a concurrent pytest run may prune under us."""
    with tempfile.TemporaryDirectory(prefix="le-account-events-") as path:
        yield Path(path)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    yield engine
    await engine.dispose()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = create_redis(settings)
    yield client
    await client.delete(KeySpace(settings.redis_key_prefix).account_events)
    await client.aclose()


async def deactivate(settings: Settings, engine: AsyncEngine, user_id: int, reason: str) -> None:
    hasher = Hasher(settings)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            users = UserService(session=session)
            issuer = TokenIssuer(settings, await load_keyring(engine, settings))
            auth = AuthService(users, SessionService(session, issuer, settings), hasher, issuer, settings)
            await auth.deactivate(await users.get(user_id), reason)
            await session.commit()
    finally:
        hasher.close()


async def stream_events(redis: Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields[EVENT_FIELD.encode()]) for _, fields in await redis.xrange(stream)]


# ---- end to end: the API, the relay, a Redis restart, the doc's consumer --------------------------------


async def test_a_consumer_group_sees_one_accounts_changes_in_order_across_a_redis_restart(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, private_dir: Path
) -> None:
    server = EmbeddedRedis(private_dir / "redis", appendonly=True)
    server.start()
    own = msgspec.structs.replace(settings, redis_url=server.url, account_events_poll_ms=50, audit_writer_enabled=False)
    received: list[dict[str, Any]] = []
    running = threading.Event()
    running.set()
    consumer = threading.Thread(
        target=doc_consumer(),
        args=(server.url, received.append),
        kwargs={
            "stream": KeySpace(own.redis_key_prefix).account_events,
            "group": "platform",
            "running": running.is_set,
        },
        daemon=True,
    )
    app = create_app(own)
    try:
        consumer.start()
        async with AsyncTestClient(app=from_loopback(served(app))) as client:
            account = await registered(client)
            user_id, token = account["user_id"], account["access_token"]
            await eventually(lambda: types_of(received, user_id) == IN_ORDER[:1], 20, "the registration")
            renamed = await client.put("/api/auth/profile", json={"name": "Aline Mukeshimana"}, headers=bearer(token))
            assert renamed.status_code == 200, renamed.text
            await eventually(lambda: types_of(received, user_id) == IN_ORDER[:2], 20, "the update")

            server.stop()  # Redis goes away with the consumer blocked in XREADGROUP
            # The session signed in a moment ago, so no current_password: checking one takes a slot of the
            # number's budget in Redis, which fails closed while Redis is down.
            changed = await client.put(
                "/api/auth/profile",
                json={"new_password": OTHER_PASSWORD},
                headers=bearer(token),
            )
            assert changed.status_code == 200, changed.text
            await deactivate(own, engine, user_id, reason="requested by the family")
            await asyncio.sleep(0.5)  # the relay polls and fails meanwhile
            waiting = [row["type"] for row in await rows_of(db, user_id) if row["published_at"] is None]
            assert waiting == ["account.credentials_changed", "account.sessions_revoked", "account.deactivated"]

            server.start()  # same port, same append-only file: the group and its position are back
            await eventually(lambda: "account.deactivated" in types_of(received, user_id), 30, "the rest")
    finally:
        running.clear()
        consumer.join(10)
        server.stop()

    events = first_copies(received, user_id)
    assert [event["type"] for event in events if event["type"] in IN_ORDER] == IN_ORDER
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    stored = await rows_of(db, user_id)
    assert [str(row["id"]) for row in stored] == [event["id"] for event in events]
    assert all(row["published_at"] is not None for row in stored)
    assert events[1]["data"] == {"fields": {"name": "Aline Mukeshimana"}}
    assert events[2]["data"] == {"credentials": ["password"]}
    assert events[-1]["data"] == {"reason": "requested by the family"}


# ---- the outbox: what each change writes ---------------------------------------------------------------


async def test_events_name_the_changed_fields_and_credentials_never_a_secret(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    account = await registered(client, email="aline@example.org", date_of_birth="2010-03-14")
    user_id, token = account["user_id"], account["access_token"]
    same_email_new_cycle = {"email": "aline@example.org", "personal_cycle_length": 29}
    response = await client.put("/api/auth/profile", json=same_email_new_cycle, headers=bearer(token))
    assert response.status_code == 200, response.text
    credentials = {"current_password": STRONG_PASSWORD, "new_password": OTHER_PASSWORD, "new_pin": GOOD_PIN}
    response = await client.put("/api/auth/profile", json=credentials, headers=bearer(token))
    assert response.status_code == 200, response.text

    rows = await rows_of(db, user_id)
    assert [row["type"] for row in rows] == [
        "account.registered",
        "account.updated",
        "account.updated",
        "account.credentials_changed",
        "account.sessions_revoked",
    ]
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
    registration = data_of(rows[0])
    assert registration["email"] == "aline@example.org" and registration["date_of_birth"] == "2010-03-14"
    assert registration["user_type"] == account["user_type"] and registration["role"] == "user"
    # The email was sent again unchanged: not named. Giving a cycle length marks the cycle info as provided.
    assert data_of(rows[1]) == {"fields": {"personal_cycle_length": 29, "has_provided_cycle_info": True}}
    # A new PIN also turns PIN sign-in on, which is a profile field; the credentials are only named.
    assert data_of(rows[2]) == {"fields": {"enable_pin_auth": True}}
    assert data_of(rows[3]) == {"credentials": ["password", "pin"]}
    assert data_of(rows[4]) == {"reason": "credentials_changed"}
    user = await db.fetchrow("SELECT password_hash, pin_hash FROM users WHERE id = $1", user_id)
    everything = " ".join(row["payload"] for row in rows)
    for secret in (STRONG_PASSWORD, OTHER_PASSWORD, GOOD_PIN, user["password_hash"], user["pin_hash"], "$argon2"):
        assert secret not in everything


async def test_a_phone_change_is_an_update_and_a_credential_change(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    account = await registered(client)
    response = await client.put(
        "/api/auth/profile", json={"phone_number": "0788777123"}, headers=bearer(account["access_token"])
    )
    assert response.status_code == 200, response.text
    rows = (await rows_of(db, account["user_id"]))[1:]
    assert [(row["type"], data_of(row)) for row in rows] == [
        ("account.updated", {"fields": {"phone_number": "+250788777123"}}),
        ("account.credentials_changed", {"credentials": ["phone"]}),
        # A phone change ends the other sessions, as a password change does.
        ("account.sessions_revoked", {"reason": "credentials_changed"}),
    ]


async def deactivate_uncommitted(settings: Settings, engine: AsyncEngine, session: AsyncSession, user_id: int) -> None:
    hasher = Hasher(settings)
    try:
        users = UserService(session=session)
        issuer = TokenIssuer(settings, await load_keyring(engine, settings))
        auth = AuthService(users, SessionService(session, issuer, settings), hasher, issuer, settings)
        await auth.deactivate(await users.get(user_id), "rule broken")
    finally:
        hasher.close()


async def test_the_event_commits_or_rolls_back_with_its_change(
    settings: Settings, engine: AsyncEngine, client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    user_id = (await registered(client))["user_id"]
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await deactivate_uncommitted(settings, engine, session, user_id)
        await session.rollback()
    assert await db.fetchval("SELECT is_active FROM users WHERE id = $1", user_id) is True
    assert [row["type"] for row in await rows_of(db, user_id)] == ["account.registered"]
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await deactivate_uncommitted(settings, engine, session, user_id)
        await session.commit()
    assert await db.fetchval("SELECT is_active FROM users WHERE id = $1", user_id) is False
    assert [(row["type"], row["seq"]) for row in await rows_of(db, user_id)] == [
        ("account.registered", 1),
        ("account.deactivated", 2),  # the rolled-back attempt used no number
    ]


async def test_concurrent_changes_of_one_account_get_distinct_consecutive_numbers(
    settings: Settings, client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    user_id = (await registered(client))["user_id"]
    engine = sqlalchemy_config(settings).get_engine()  # a pool: the writers really run side by side
    start = asyncio.Event()

    async def change(n: int) -> None:
        async with AsyncSession(engine) as session:
            await start.wait()
            await AccountEventService(session=session).record(user_id, "account.updated", fields={"n": n})
            await asyncio.sleep(0.01 * (n % 3))  # hold the transaction open a little, unevenly
            await session.commit()

    try:
        tasks = [asyncio.create_task(change(n)) for n in range(20)]
        await asyncio.sleep(0.05)
        start.set()
        await asyncio.gather(*tasks)
    finally:
        await engine.dispose()
    rows = await rows_of(db, user_id)
    assert [row["seq"] for row in rows] == list(range(1, 22))
    # Numbers follow the commit order: each row was written after the one before it.
    assert [row["created_at"] for row in rows] == sorted(row["created_at"] for row in rows)


async def test_imported_and_deleted_accounts_have_their_events(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    user_id = await db.fetchval(
        "INSERT INTO users (id, name, phone_number, password_hash, user_type, created_at, updated_at) "
        "VALUES (7001, 'Jean Bosco', '+250788123456', '$2b$12$legacy', 'parent', now(), now()) RETURNING id"
    )
    async with AsyncSession(engine) as session:
        profile = {"name": "Jean Bosco", "phone_number": "+250788123456", "user_type": "parent", "password_hash": "x"}
        await record_imported(session, user_id, profile)
        await session.commit()
    async with AsyncSession(engine) as session:
        await AccountEventService(session=session).deleted(user_id, reason="asked to be forgotten")
        await session.execute(sa_text("DELETE FROM users WHERE id = :id"), {"id": user_id})
        await session.commit()
    rows = await rows_of(db, user_id)
    assert [(row["type"], row["seq"]) for row in rows] == [("account.imported", 1), ("account.deleted", 2)]
    assert data_of(rows[0]) == {
        "source": "flask",
        "name": "Jean Bosco",
        "phone_number": "+250788123456",
        "user_type": "parent",
    }
    assert data_of(rows[1]) == {"reason": "asked to be forgotten"}


# ---- the relay ------------------------------------------------------------------------------------------


async def make_events(engine: AsyncEngine, db: asyncpg.Connection, users: int, each: int) -> list[int]:
    ids = []
    for n in range(users):
        ids.append(
            await db.fetchval(
                "INSERT INTO users (name, phone_number, password_hash, user_type, created_at, updated_at) "
                "VALUES ('Test', $1, 'x', 'parent', now(), now()) RETURNING id",
                f"+25078900{n:04d}",
            )
        )
    async with AsyncSession(engine) as session:
        events = AccountEventService(session=session)
        for k in range(each):
            for user_id in ids:
                await events.record(user_id, "account.updated", fields={"k": k})
        await session.commit()
    return ids


async def test_relays_publish_each_event_once_and_each_users_events_in_order_whatever_the_clock(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, redis: Redis
) -> None:
    users = await make_events(engine, db, users=4, each=6)
    # The database clock stepped back for one user: its later events look older than its first ones.
    await db.execute(
        "UPDATE account_events SET created_at = created_at - (seq * interval '1 hour') WHERE user_id = $1", users[0]
    )
    keys = KeySpace(settings.redis_key_prefix)
    relays = [AccountEventRelay(redis, engine, keys, settings) for _ in range(3)]

    async def drain(relay: AccountEventRelay) -> None:
        while (published := await relay.publish_batch(limit=5)) != 0:
            if published is None:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(drain(relay) for relay in relays))
    published = await stream_events(redis, keys.account_events)
    assert sorted(event["id"] for event in published) == sorted(
        str(row["id"]) for row in await db.fetch("SELECT id FROM account_events")
    )  # every event, once
    for user_id in users:
        assert [event["seq"] for event in published if event["user_id"] == user_id] == list(range(1, 7))
    assert await db.fetchval("SELECT count(*) FROM account_events WHERE published_at IS NULL") == 0


async def test_redis_down_leaves_the_batch_unpublished_for_the_next_try(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, redis: Redis, private_dir: Path
) -> None:
    await make_events(engine, db, users=2, each=2)
    server = EmbeddedRedis(private_dir / "redis", appendonly=False)
    server.start()
    own = msgspec.structs.replace(settings, redis_url=server.url)
    down = create_redis(own)
    server.stop()
    relay = AccountEventRelay(down, engine, KeySpace(own.redis_key_prefix), own)
    try:
        with pytest.raises((RedisError, OSError)):
            await relay.publish_batch()
    finally:
        await down.aclose()
    assert await db.fetchval("SELECT count(*) FROM account_events WHERE published_at IS NULL") == 4
    assert await AccountEventRelay(redis, engine, KeySpace(settings.redis_key_prefix), settings).publish_pending() == 4


async def test_prune_deletes_only_published_events_past_the_retention(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, redis: Redis
) -> None:
    await make_events(engine, db, users=3, each=2)
    relay = AccountEventRelay(redis, engine, KeySpace(settings.redis_key_prefix), settings)
    assert await relay.publish_pending() == 6
    await make_events_for_existing(engine, db)  # two more, never published
    await db.execute(
        "UPDATE account_events SET published_at = published_at - $1 * interval '1 day' WHERE seq = 1",
        settings.account_events_retention_days + 1,
    )
    assert await relay.prune() == 3  # the first event of each user
    left = await db.fetch("SELECT seq, published_at FROM account_events ORDER BY user_id, seq")
    assert [row["seq"] for row in left] == [2, 3, 2, 3, 2]
    assert sum(row["published_at"] is None for row in left) == 2


async def make_events_for_existing(engine: AsyncEngine, db: asyncpg.Connection) -> None:
    ids = [row["id"] for row in await db.fetch("SELECT id FROM users ORDER BY id LIMIT 2")]
    async with AsyncSession(engine) as session:
        for user_id in ids:
            await AccountEventService(session=session).record(user_id, "account.sessions_revoked", reason="test")
        await session.commit()


# ---- the commands ------------------------------------------------------------------------------------


def test_staff_commands_record_events_and_the_relay_command_publishes_them(settings: Settings, tmp_path: Path) -> None:
    assert settings.database_url and settings.redis_url
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "DATA_DIR": str(tmp_path),
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
    }
    runner = CliRunner()
    create = ["users", "create-admin", "--phone", "0788555011", "--name", "Grace Mukamana", "--role", "security"]
    result = runner.invoke(main, [*create, "--password-stdin"], input=STRONG_PASSWORD + "\n", env=env)
    assert result.exit_code == 0, result.output
    promote = ["users", "create-admin", "--phone", "0788555011", "--name", "Grace", "--role", "admin", "--promote"]
    confirmed = [*promote, "--yes-this-account-is-theirs", "--password-stdin"]
    result = runner.invoke(main, confirmed, input=OTHER_PASSWORD + "\n", env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["accounts", "relay", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "published 4 account events" in result.output

    async def read() -> list[dict[str, Any]]:
        client = create_redis(settings)
        try:
            stream = KeySpace(settings.redis_key_prefix).account_events
            events = await stream_events(client, stream)
            await client.delete(stream)
            return events
        finally:
            await client.aclose()

    events = asyncio.run(read())
    assert [(event["type"], event["seq"]) for event in events] == [
        ("account.registered", 1),
        ("account.role_changed", 2),
        # Promotion sets the password the admin typed and ends every session (issue 17, item 1).
        ("account.credentials_changed", 3),
        ("account.sessions_revoked", 4),
    ]
    assert events[0]["data"]["role"] == "security" and events[0]["data"]["phone_number"] == "+250788555011"
    assert events[1]["data"] == {"role": "admin", "previous_role": "security"}
