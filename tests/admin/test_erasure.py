"""Issue 21, finding 6: after an admin deletes an account, nothing but the login history holds the person.

The person signs up with a name, number, email and birth date, uses the account (signs in, gets a
PIN wrong, changes name, number and preferences: events, stream entries and limiter keys exist),
and is deleted. Then every table but the login history, and every Redis key of the test's prefix
(names and values of every type), is searched for each of those values.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest

from app.accounts.erasure import erase_from_redis
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.events.relay import EVENT_FIELD, withdraw_entries
from app.ratelimit.limiter import LoginLimiter
from tests.accounts.test_account_events import doc_consumer
from tests.admin.support import account_of_kind, login, panel_admin
from tests.cluster import local_cluster
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, bearer, e164, new_phone, registered

ADMIN = "/api/admin/users"
QUICK = {"account_events_poll_ms": 50}
# The login history and its hourly rollups (and the months' partitions): kept by design.
LOGIN_HISTORY = "login_attempts%"


def needles(first_phone: str, second_phone: str) -> dict[str, list[str]]:
    """What identifies the person, in every form it may be written in."""
    return {
        "name": ["Umutoni", "Ineza"],
        "phone": [number for local in (first_phone, second_phone) for number in (e164(local), local, local[1:])],
        "email": ["keza.umutoni@example.org"],
        "birth date": ["2011-03-14", "14/03/2011"],
    }


async def table_rows(db: Any) -> dict[str, str]:
    """Every base table but the login history, its rows cast to text, by table name."""
    tables = await db.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND table_name NOT LIKE $1",
        LOGIN_HISTORY,
    )
    assert {"users", "account_events", "admin_actions", "refresh_tokens"} <= {t["table_name"] for t in tables}
    found = {}
    for table in tables:
        name = f'"{table["table_schema"]}"."{table["table_name"]}"'
        rows = await db.fetch(f"SELECT t::text AS row FROM {name} t")  # noqa: S608 (names from the catalogue)
        found[name] = "\n".join(row["row"] for row in rows)
    return found


async def redis_contents(redis: Any, prefix: str) -> dict[str, str]:
    """Every key under ``prefix``: its name and its whole value, whatever the type, as text."""
    found = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=500):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            raise AssertionError(f"{key!r} has a type this search does not read: {kind}")
        name = key.decode()
        found[name] = (
            name + "\n" + (value if isinstance(value, bytes) else repr(value).encode()).decode(errors="replace")
        )
    return found


def where_found(places: dict[str, str], values: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [
        (what, place)
        for what, forms in values.items()
        for place, text in places.items()
        if any(form.lower() in text.lower() for form in forms)
    ]


async def settled(redis: Any, db: Any, keys: KeySpace) -> None:
    """Every account event published (the app's relay), every login attempt written (its audit writer)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        unpublished = await db.fetchval("SELECT count(*) FROM account_events WHERE published_at IS NULL")
        in_transit = sum([await redis.xlen(stream) for stream in keys.audit_streams()])
        if not unpublished and not in_transit:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{unpublished} events unpublished, {in_transit} login attempts unwritten")


@pytest.fixture
async def redis(settings: Any) -> Any:
    client = create_redis(settings)
    yield client
    await client.aclose()


@pytest.mark.parametrize("settings", [QUICK], indirect=True)
async def test_deleting_an_account_leaves_the_person_nowhere_but_the_login_history(client, db, redis, settings):
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    admin_headers, _ = await panel_admin(client, db)
    first, second = new_phone(), new_phone()
    person = await registered(
        client,
        name="Keza Umutoni",
        phone_number=first,
        email="keza.umutoni@example.org",
        date_of_birth="2011-03-14",
        pin=GOOD_PIN,
    )
    user_id = person["user_id"]
    assert (await login(client, first, password=STRONG_PASSWORD)).status_code == 200  # a known client
    assert (await login(client, first, pin="9513")).status_code == 401  # the PIN lock's count
    assert (await login(client, first, password="Wrong-Guess-000")).status_code == 401  # the password window
    changed = await client.put(
        "/api/auth/profile",
        headers=bearer(person["access_token"]),
        json={
            "name": "Keza Ineza",
            "phone_number": second,
            "notification_preferences": {"sms": True, "email": False},
            "personal_cycle_length": 29,
        },
    )
    assert changed.status_code == 200, changed.text
    assert (await login(client, second, password=STRONG_PASSWORD)).status_code == 200
    assert (await login(client, second, password="Wrong-Guess-001")).status_code == 401
    # The security team searched the history by both numbers (as typed, and in E.164): the query log keeps them.
    analyst, _ = await account_of_kind(client, db, "security")
    for searched in (first, e164(second)):
        found = await client.get("/api/audit/login-attempts", params={"phone_number": searched}, headers=analyst)
        assert found.status_code == 200, found.text
    await settled(redis, db, keys)

    values = needles(first, second)
    before_db = where_found(await table_rows(db), values)
    before_redis = where_found(await redis_contents(redis, settings.redis_key_prefix), values)
    # The search finds the person while the account exists: in its row and events, in the stream
    # and in the keys named after both numbers.
    assert {what for what, _ in before_db} == set(values)
    assert {what for what, _ in before_redis} >= {"name", "phone", "email", "birth date"}
    history = await db.fetchval("SELECT count(*) FROM login_attempts WHERE user_id = $1", user_id)
    assert history >= 3

    deleted = await client.delete(f"{ADMIN}/{user_id}", headers=admin_headers)
    assert deleted.status_code == 200, deleted.text
    await settled(redis, db, keys)

    assert where_found(await table_rows(db), values) == []
    assert where_found(await redis_contents(redis, settings.redis_key_prefix), values) == []
    # Kept: the login history (AUDIT_RETENTION_DAYS), and an unbroken, scrubbed sequence of events
    # whose last one tells consumers to erase theirs; it is the account's only entry left on the stream.
    assert await db.fetchval("SELECT count(*) FROM login_attempts WHERE user_id = $1", user_id) == history
    events = await db.fetch("SELECT seq, type, payload FROM account_events WHERE user_id = $1 ORDER BY seq", user_id)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "account.deleted"
    assert all(json.loads(event["payload"]).get("erased") for event in events[:-1])
    entries = await redis.xrange(keys.account_events)
    owned = [
        json.loads(fields[b"event"]) for _, fields in entries if json.loads(fields[b"event"])["user_id"] == user_id
    ]
    assert [(event["type"], event["seq"]) for event in owned] == [("account.deleted", len(events))]


async def test_a_deletion_redis_cannot_erase_is_refused_and_changes_nothing(client, db, redis, settings):
    """Redis refusing a command of the erasure (here the stream key holds a string): 503, nothing deleted."""
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    admin_headers, _ = await panel_admin(client, db)
    person = await registered(client, name="Keza Umutoni", email="keza.umutoni@example.org")
    await redis.delete(keys.account_events)
    await redis.set(keys.account_events, "not a stream")
    try:
        refused = await client.delete(f"{ADMIN}/{person['user_id']}", headers=admin_headers)
    finally:
        await redis.delete(keys.account_events)
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "erasure_unavailable" and refused.headers["Retry-After"]
    row = await db.fetchrow("SELECT name, email, deleted_at FROM users WHERE id = $1", person["user_id"])
    assert (row["name"], row["email"], row["deleted_at"]) == ("Keza Umutoni", "keza.umutoni@example.org", None)
    payloads = await db.fetch("SELECT type, payload FROM account_events WHERE user_id = $1", person["user_id"])
    assert [event["type"] for event in payloads] == ["account.registered"]
    assert "Umutoni" in payloads[0]["payload"]

    assert (await client.delete(f"{ADMIN}/{person['user_id']}", headers=admin_headers)).status_code == 200
    assert await db.fetchval("SELECT name FROM users WHERE id = $1", person["user_id"]) == "Deleted account"


async def test_withdrawing_reads_the_whole_stream_and_keeps_the_deleted_event(redis, settings):
    """Entries of the account anywhere in a stream longer than a page, duplicates included, go; others stay."""
    ours_id = 10_000  # no other entry has this user id
    stream = KeySpace(settings.redis_key_prefix).account_events
    ours = {7, 999, 1000, 2998}  # positions: in the first page, either side of its end, in the last page
    async with redis.pipeline(transaction=False) as pipe:
        for position in range(3000):
            user_id = ours_id if position in ours else position
            pipe.xadd(stream, {EVENT_FIELD: json.dumps({"user_id": user_id, "type": "account.updated", "seq": 1})})
        pipe.xadd(stream, {EVENT_FIELD: json.dumps({"user_id": ours_id, "type": "account.deleted", "seq": 2})})
        await pipe.execute()
    assert await withdraw_entries(redis, stream, ours_id) == len(ours)
    left = [json.loads(fields[EVENT_FIELD.encode()]) for _, fields in await redis.xrange(stream)]
    assert len(left) == 3001 - len(ours)
    assert [event["type"] for event in left if event["user_id"] == ours_id] == ["account.deleted"]


async def test_the_documented_consumer_acknowledges_an_entry_withdrawn_after_it_read_it(redis, settings):
    """A consumer read an entry and had not acknowledged it when the account was erased: it comes back empty."""
    stream = KeySpace(settings.redis_key_prefix).account_events
    await redis.xgroup_create(stream, "platform", id="0", mkstream=True)
    await redis.xadd(stream, {EVENT_FIELD: json.dumps({"user_id": 5, "type": "account.registered", "seq": 1})})
    assert await redis.xreadgroup("platform", "platform-1", {stream: ">"})  # read, never acknowledged
    assert await withdraw_entries(redis, stream, 5) == 1

    handled: list[Any] = []
    turns = iter([True, True])
    await asyncio.to_thread(
        doc_consumer(), settings.redis_url, handled.append, stream=stream, running=lambda: next(turns, False)
    )
    assert handled == []
    assert (await redis.xpending(stream, "platform"))["pending"] == 0


@pytest.mark.slow
async def test_on_a_redis_cluster_the_numbers_keys_and_the_entries_go_from_their_own_nodes(settings, tmp_path):
    """REDIS_CLUSTER=true: each number's keys live in its own slot (its hash tag), the stream in another."""
    with local_cluster(tmp_path / "cluster", masters=3) as cluster:
        on_cluster = msgspec.structs.replace(settings, redis_url=cluster.seed_url, redis_cluster=True)
        redis = create_redis(on_cluster)
        try:
            limiter = LoginLimiter(redis, on_cluster)
            numbers = {f"+25078800{n:04d}" for n in range(12)}  # spread over the shards, and so the masters
            assert len({cluster.master_of_key(limiter.keys.phone(n, "pin")).port for n in numbers}) > 1
            for number in numbers:
                await limiter.reserve_account(number, "pin")
                await limiter.execute([limiter.remember_call(number, "198.51.100.7")])
                decision = await limiter.reserve_account(number, "password")
                assert decision.reservation is not None
                await limiter.settle(decision.reservation, "failure")
            stream = limiter.keys.account_events
            for user_id, kind in ((7, "account.registered"), (8, "account.registered"), (7, "account.deleted")):
                await redis.xadd(stream, {EVENT_FIELD: json.dumps({"user_id": user_id, "type": kind, "seq": 1})})

            def number_keys() -> list[str]:
                found = []
                for node in cluster.nodes:
                    with node.client() as client:
                        found += [str(key) for key in client.keys(f"{settings.redis_key_prefix}*") if ":p:" in str(key)]
                return found

            assert len(number_keys()) == 3 * len(numbers)  # password, PIN and known clients of each
            assert await erase_from_redis(redis, limiter.keys, 7, numbers) == 1
            assert number_keys() == []
            owners = [json.loads(fields[b"event"]) for _, fields in await redis.xrange(stream)]
            assert [(e["user_id"], e["type"]) for e in owners] == [(8, "account.registered"), (7, "account.deleted")]
        finally:
            await redis.aclose()
