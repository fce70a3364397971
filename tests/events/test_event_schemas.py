"""Every account event the service emits is valid against its published JSON Schema (app/events/schemas/).

The schemas are files written by hand, not derived from the code: the service is driven through
every path that writes an event (the API, the admin panel, the CLI, the legacy import's hooks),
and each event is validated as the table holds it and as the stream carries it, erased ones too.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import typing
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from app.db.config import sqlalchemy_config
from app.events.outbox import EventType, record_imported, record_imported_batch
from app.events.relay import EVENT_FIELD, AccountEventRelay
from app.events.schemas import HERE, event_schemas
from tests.admin.support import panel_admin
from tests.audit.history.test_cli import run_cli
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, new_phone, registered

ADMIN = "/api/admin/users"
EVENT_TYPES = set(typing.get_args(EventType))


def validator(event_type: str) -> jsonschema.protocols.Validator:
    schema = event_schemas()[event_type]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # type: ignore[no-any-return]


def test_every_event_type_has_a_valid_schema_file() -> None:
    assert set(event_schemas()) == EVENT_TYPES, "an event type without a schema, or a schema without a type"
    for event_type, schema in event_schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["type"] == {"const": event_type}
        assert (HERE / f"{event_type}.json").is_file()


async def test_the_schemas_are_served(client: AsyncTestClient[Any]) -> None:
    listed = await client.get("/api/events/schemas")
    assert listed.status_code == 200 and listed.json()["types"] == sorted(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        answer = await client.get(f"/api/events/schemas/{event_type}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/schema+json")
        assert answer.json() == json.loads((HERE / f"{event_type}.json").read_text())
    unknown = await client.get("/api/events/schemas/account.exploded")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_event_type"


async def cli(settings: Settings, tmp_path: Path, args: list[str], stdin: str) -> None:
    result = await asyncio.to_thread(run_cli, settings, tmp_path, args, stdin)
    assert result.exit_code == 0, result.output


async def legacy_rows(db: asyncpg.Connection, settings: Settings) -> None:
    """Two accounts as the legacy import writes them: one through its per-user hook, one through its batch."""
    ids = []
    for n in range(2):
        ids.append(
            await db.fetchval(
                "INSERT INTO users (name, phone_number, password_hash, user_type, date_of_birth, source,"
                " notification_preferences, created_at, updated_at)"
                " VALUES ($1, $2, '$2b$04$legacy', 'parent', '1985-02-01', 'flask', '{\"sms\": true}', now(), now())"
                " RETURNING id",
                f"Legacy Parent {n}",
                new_phone().replace("0", "+250", 1),
            )
        )
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        async with AsyncSession(engine) as session:
            profile = {"name": "Legacy Parent 0", "user_type": "parent", "email": None, "password_hash": "x"}
            await record_imported(session, ids[0], profile)
            await session.commit()
    finally:
        await engine.dispose()
    async with db.transaction():
        await record_imported_batch(db, [ids[1]])


async def drive_every_change(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings, tmp: Path
) -> None:
    admin, _ = await panel_admin(client, db)
    # A mother signs up, edits her profile, changes number and password, signs out everywhere.
    mother = await registered(client, email="aline@example.org", date_of_birth="1990-05-14", pin=GOOD_PIN)
    token = bearer(mother["access_token"])
    changes: list[dict[str, Any]] = [
        {"name": "Aline Mukeshimana", "personal_cycle_length": 29, "notification_preferences": {"sms": False}},
        {"phone_number": new_phone()},
        {"new_password": OTHER_PASSWORD, "current_password": STRONG_PASSWORD},
    ]
    for change in changes:
        answer = await client.put("/api/auth/profile", json=change, headers=token)
        assert answer.status_code == 200, answer.text
    assert (await client.post("/api/auth/logout-all", headers=token)).status_code == 200
    # The admin panel: a change of kind, a recovery code, a deactivation, and an erasure.
    daughter = await registered(client, user_type="adolescent", email="keza@example.org")
    target = f"{ADMIN}/{daughter['user_id']}"
    answer = await client.patch(f"{target}/change-role", json={"user_type": "parent"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert (await client.post(f"{target}/recovery", headers=admin)).status_code == 200
    assert (await client.patch(f"{target}/toggle-status", headers=admin)).status_code == 200
    assert (await client.delete(target, headers=admin)).status_code == 200
    # Erasure withdraws the daughter's earlier entries from the stream: a deactivation that stays there.
    son = await registered(client, user_type="adolescent")
    assert (await client.patch(f"{ADMIN}/{son['user_id']}/toggle-status", headers=admin)).status_code == 200
    # The command line: a staff account made, and one promoted.
    made = ["users", "create-admin", "--phone", new_phone(), "--name", "Claudine Uwera", "--role", "admin"]
    made += ["--password-stdin"]
    await cli(settings, tmp, made, STRONG_PASSWORD + "\n")
    analyst = await registered(client)
    promote = ["users", "create-admin", "--phone", analyst["user"]["phone_number"], "--name", "Grace Mukamana"]
    promote += ["--role", "security", "--promote", "--password-stdin", "--yes-this-account-is-theirs"]
    await cli(settings, tmp, promote, STRONG_PASSWORD + "\n")
    await legacy_rows(db, settings)


def envelope(row: asyncpg.Record) -> dict[str, Any]:
    """A table row as the stream carries it (docs/account-events.md, "The entry")."""
    occurred = row["created_at"].astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    data = json.loads(row["payload"])
    return {
        "id": str(row["id"]),
        "type": row["type"],
        "user_id": row["user_id"],
        "seq": row["seq"],
        "occurred_at": occurred,
        "data": data,
    }


def invalid(event: dict[str, Any]) -> list[str]:
    if event.get("type") not in EVENT_TYPES:
        return [f"unknown type {event.get('type')!r}"]
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator(event["type"]).iter_errors(event)]


@pytest.mark.parametrize("settings", [{"register_limit": 10_000}], indirect=True)
async def test_every_emitted_event_is_valid_against_its_schema(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    await drive_every_change(client, db, settings, tmp_path)
    redis: Redis = create_redis(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    stream = KeySpace(settings.redis_key_prefix).account_events
    try:
        await AccountEventRelay(redis, engine, KeySpace(settings.redis_key_prefix), settings).publish_pending()
        entries = await redis.xrange(stream)
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()

    stored = [envelope(row) for row in await db.fetch("SELECT * FROM account_events ORDER BY user_id, seq")]
    published = [json.loads(fields[EVENT_FIELD.encode()]) for _, fields in entries if fields]
    for where, events in (("account_events", stored), ("the accounts stream", published)):
        problems = {f"{event['type']} #{event['user_id']}/{event['seq']}": invalid(event) for event in events}
        assert not {name: errors for name, errors in problems.items() if errors}, where
        assert {event["type"] for event in events} == EVENT_TYPES, f"{where} lacks a type"
    assert any(event["data"].get("erased") for event in stored), "no erased event was checked"
    reasons = {event["data"]["reason"] for event in stored if event["type"] == "account.sessions_revoked"}
    assert reasons == {"credentials_changed", "logout_all", "recovery", "role_granted"}
    credentials = {
        name
        for event in published
        if event["type"] == "account.credentials_changed"
        for name in event["data"]["credentials"]
    }
    assert credentials == {"password", "pin", "phone", "recovery_code"}


def test_the_schemas_refuse_what_must_never_be_sent() -> None:
    """The schemas are not a rubber stamp: a secret, an unknown field or a wrong shape is invalid."""
    base = {
        "id": "01939c1e-6b1c-7d3e-9a41-2f8c0e5b7a10",
        "type": "account.updated",
        "user_id": 42,
        "seq": 3,
        "occurred_at": "2026-12-10T09:14:03.512345Z",
        "data": {"fields": {"name": "Aline"}},
    }
    assert invalid(base) == []
    assert invalid({**base, "data": {"fields": {"password_hash": "$argon2id$..."}}})
    assert invalid({**base, "data": {"fields": {"personal_cycle_length": "29"}}})
    assert invalid({**base, "seq": 0})
    assert invalid({**base, "occurred_at": "2026-12-10 09:14"})
    assert invalid({**base, "type": "account.credentials_changed", "data": {"credentials": ["password"], "new": "x"}})
    assert invalid({**base, "type": "account.credentials_changed", "data": {"credentials": []}})
    assert invalid({**base, "type": "account.registered", "data": {"name": "Aline"}})  # fields missing
    assert invalid({**base, "type": "account.registered", "data": {"erased": True, "name": "Aline"}})  # not scrubbed
    assert invalid({**base, "type": "account.deleted", "data": {}})
