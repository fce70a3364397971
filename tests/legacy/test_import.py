"""The legacy import of a Flask-era database with every quirk of the shared README, into real Postgres."""

from __future__ import annotations

import datetime
import json
from typing import Any

import argon2
import asyncpg
import msgspec
import pytest

from app.accounts.schemas import UserView
from app.core.settings import Settings
from app.db.models import User
from app.legacy.importer import ImportFailed
from tests.helpers import STRONG_PASSWORD, registered
from tests.legacy import flask_data as fd
from tests.legacy.conftest import import_legacy

UTC = datetime.UTC

USERS_CHECKSUM = """
SELECT count(*) AS n, md5(string_agg(concat_ws('|', id, name, phone_number, email,
    CASE WHEN password_hash LIKE '$2%' THEN password_hash ELSE 'unusable' END, user_type, role, is_active, pin_hash,
    enable_pin_auth, personal_cycle_length, personal_period_length, has_provided_cycle_info, last_activity,
    current_session_data, session_timeout_minutes, account_type, is_phone_verified, allow_parent_access,
    data_sharing_consent, notification_preferences::text, created_at, updated_at, source), ',' ORDER BY id)) AS sum
FROM users
"""
HISTORY_CHECKSUM = """
SELECT count(*) AS n, md5(string_agg(concat_ws('|', event_id, created_at, phone_number, user_id, success, auth_method,
    reason, host(ip_address), user_agent, source, legacy_ip), ',' ORDER BY event_id)) AS sum
FROM login_attempts
"""


async def checksums(conn: asyncpg.Connection) -> tuple[Any, ...]:
    users = await conn.fetchrow(USERS_CHECKSUM)
    history = await conn.fetchrow(HISTORY_CHECKSUM)
    return (users["n"], users["sum"], history["n"], history["sum"])


async def user(db: asyncpg.Connection, user_id: int) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    return record


def listed(report: Any, user_id: int) -> list[str]:
    return [item["reason"] for item in report.as_dict()["not_imported"] if item["id"] == user_id]


def changes(report: Any, user_id: int) -> set[str]:
    return {item["problem"] for item in report.as_dict()["changes"] if item["id"] == user_id}


@pytest.fixture
async def quirky(flask: asyncpg.Connection) -> asyncpg.Connection:
    await fd.add_quirks(flask)
    await fd.add_history(flask)
    return flask


async def test_ids_are_kept_and_the_next_registration_gets_a_higher_id(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    report = await import_legacy(settings, flask_url)
    source_ids = {r["id"] for r in await quirky.fetch("SELECT id FROM users")}
    target_ids = {r["id"] for r in await db.fetch("SELECT id FROM users")}
    not_imported = {item["id"] for item in report.as_dict()["not_imported"]}
    assert target_ids == source_ids - not_imported
    assert {fd.HIGH_ID, fd.CHILD, fd.PARENT} <= target_ids
    # The platform's references still point at the right people.
    parent = await quirky.fetchval("SELECT user_id FROM parents")
    assert (await user(db, parent))["user_type"] == "parent"  # type: ignore[index]
    new = await registered(client)
    assert new["user_id"] > fd.HIGH_ID


async def test_every_imported_account_has_one_imported_event_and_a_rerun_adds_none(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    await import_legacy(settings, flask_url)
    await import_legacy(settings, flask_url)
    users = {r["id"] for r in await db.fetch("SELECT id FROM users")}
    assert users
    events = await db.fetch("SELECT user_id, seq, type, payload FROM account_events ORDER BY user_id")
    assert [e["user_id"] for e in events] == sorted(users)
    assert {(e["seq"], e["type"]) for e in events} == {(1, "account.imported")}
    first = json.loads(events[0]["payload"])
    assert first["source"] == "flask" and "password_hash" not in first and "pin_hash" not in first
    assert first["name"] == (await user(db, events[0]["user_id"]))["name"]  # type: ignore[index]


async def test_two_forms_of_one_number_are_a_collision_and_neither_is_imported(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    report = await import_legacy(settings, flask_url)
    assert await user(db, fd.PAIR_OLDER) is None and await user(db, fd.PAIR_NEWER) is None
    assert listed(report, fd.PAIR_OLDER) == ["phone_collision"] and listed(report, fd.PAIR_NEWER) == ["phone_collision"]
    (collision,) = [c for c in report.as_dict()["phone_collisions"] if c["phone"] == "+250788100002"]
    accounts = {a["id"]: a for a in collision["accounts"]}
    assert set(accounts) == {fd.PAIR_OLDER, fd.PAIR_NEWER}
    assert accounts[fd.PAIR_OLDER]["has_pin"] is True and accounts[fd.PAIR_NEWER]["has_pin"] is False
    assert accounts[fd.PAIR_NEWER]["last_activity"].startswith("2024-08-01")
    assert accounts[fd.PAIR_OLDER]["created_at"] is not None
    assert {a["outcome"] for a in accounts.values()} == {"not_imported"}
    # "250788100004" (the plus stripped) is one number of its own, imported.
    assert (await user(db, fd.STRIPPED_PLUS))["phone_number"] == "+250788100004"  # type: ignore[index]


async def test_keep_latest_activity_keeps_the_most_recently_active_and_unlinks_the_other(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    report = await import_legacy(settings, flask_url, policy="keep-latest-activity")
    newer, older = await user(db, fd.PAIR_NEWER), await user(db, fd.PAIR_OLDER)
    assert newer is not None and newer["phone_number"] == "+250788100002"
    assert older is not None and older["phone_number"] is None
    assert "phone_collision" in changes(report, fd.PAIR_OLDER)
    assert listed(report, fd.PAIR_OLDER) == [] and listed(report, fd.PAIR_NEWER) == []


async def test_a_resolve_file_decides_the_collisions_it_names(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    first = await import_legacy(settings, flask_url, dry_run=True)
    template = first.as_dict()["resolve_template"]
    assert template == {str(fd.PAIR_NEWER): "keep", str(fd.PAIR_OLDER): "unlink"}
    # The operator decides otherwise: the older account (the one with the PIN) keeps the number.
    await import_legacy(settings, flask_url, resolutions={fd.PAIR_OLDER: "keep", fd.PAIR_NEWER: "unlink"})
    assert (await user(db, fd.PAIR_OLDER))["phone_number"] == "+250788100002"  # type: ignore[index]
    assert (await user(db, fd.PAIR_NEWER))["phone_number"] is None  # type: ignore[index]


async def test_a_bcrypt_era_user_signs_in_by_password_and_by_pin_and_is_rehashed(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    await import_legacy(settings, flask_url)
    before = await user(db, fd.BCRYPT_USER)
    assert before is not None and before["password_hash"].startswith("$2b$") and before["pin_hash"].startswith("$2b$")

    response = await client.post("/api/auth/login", json={"phone_number": "0788100001", "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == fd.BCRYPT_USER
    response = await client.post("/api/auth/login", json={"phone_number": "+250788100001", "pin": fd.WEB_PIN})
    assert response.status_code == 200, response.text

    after = await user(db, fd.BCRYPT_USER)
    assert after is not None
    assert after["password_hash"].startswith("$argon2id$") and after["pin_hash"].startswith("$argon2id$")
    # The new PIN hash is of the peppered PIN: the bare PIN does not verify against it.
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        argon2.PasswordHasher().verify(after["pin_hash"], fd.WEB_PIN)
    response = await client.post("/api/auth/login", json={"phone_number": "0788100001", "pin": fd.WEB_PIN})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("user_id", [fd.BCRYPT_2A, fd.BCRYPT_2Y])
async def test_2a_and_2y_hashes_are_kept_and_verify(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any, user_id: int
) -> None:
    await import_legacy(settings, flask_url)
    stored = (await user(db, user_id))["password_hash"]  # type: ignore[index]
    assert stored == await quirky.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    phone = await db.fetchval("SELECT phone_number FROM users WHERE id = $1", user_id)
    response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text


async def test_a_ussd_created_account_signs_in_by_pin_and_by_that_password_and_is_listed(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    report = await import_legacy(settings, flask_url)
    assert fd.USSD_USER in report.as_dict()["ussd_created"]
    assert fd.BCRYPT_USER not in report.as_dict()["ussd_created"]
    assert (await user(db, fd.USSD_USER))["current_session_data"] == '{"menu": "cycle", "step": 2}'  # type: ignore[index]
    response = await client.post("/api/auth/login", json={"phone_number": "0788100005", "pin": fd.USSD_PIN})
    assert response.status_code == 200, response.text
    response = await client.post("/api/auth/login", json={"phone_number": "0788100005", "password": fd.USSD_PIN})
    assert response.status_code == 200, response.text


async def test_a_family_managed_child_is_imported_without_a_phone(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    report = await import_legacy(settings, flask_url)
    child = await user(db, fd.CHILD)
    assert child is not None and child["phone_number"] is None and child["account_type"] == "family_managed"
    assert report.as_dict()["users"]["family_managed_without_phone"] == 1
    assert listed(report, fd.CHILD) == []
    # The API's user object holds an account without a phone.
    row = dict(child)
    row["notification_preferences"] = None
    view = UserView.of(User(**{k: v for k, v in row.items() if k in User.__table__.columns}))
    assert msgspec.json.decode(msgspec.json.encode(view))["phone_number"] is None
    # Nobody signs in as it; sign-in with any number still answers normally.
    response = await client.post("/api/auth/login", json={"phone_number": "0788999999", "password": STRONG_PASSWORD})
    assert response.status_code == 401


async def test_case_variant_emails_only_the_oldest_keeps_the_address(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    report = await import_legacy(settings, flask_url)
    assert (await user(db, fd.EMAIL_OLDER))["email"] == "Aline@Example.com"  # type: ignore[index]
    assert (await user(db, fd.EMAIL_NEWER))["email"] is None  # type: ignore[index]
    assert (await user(db, fd.EMPTY_EMAIL))["email"] is None  # type: ignore[index]
    assert "email_collision" in changes(report, fd.EMAIL_NEWER)
    (collision,) = report.as_dict()["email_collisions"]
    assert collision == {"email": "aline@example.com", "existing_account": None, "kept_by": fd.EMAIL_OLDER,
                         "cleared": [fd.EMAIL_NEWER]}  # fmt: skip


async def test_timestamps_preferences_ranges_and_unknown_hashes_follow_the_rules(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    report = await import_legacy(settings, flask_url)
    first = await user(db, fd.BCRYPT_USER)
    assert first is not None and first["created_at"] == datetime.datetime(2023, 1, 1, 12, tzinfo=UTC)
    assert first["last_activity"] == datetime.datetime(2024, 5, 1, 12, tzinfo=UTC)
    no_times = await user(db, fd.NO_TIMESTAMPS)
    assert no_times is not None and no_times["created_at"] == datetime.datetime(2022, 6, 1, 12, tzinfo=UTC)
    assert "created_at_missing" in changes(report, fd.NO_TIMESTAMPS)

    assert (await user(db, fd.BAD_PREFS))["notification_preferences"] is None  # type: ignore[index]
    assert "notification_preferences_unparsable" in changes(report, fd.BAD_PREFS)
    assert (await user(db, fd.EMPTY_PREFS))["notification_preferences"] is None  # type: ignore[index]
    assert changes(report, fd.EMPTY_PREFS) == set()
    assert json.loads((await user(db, fd.GOOD_PREFS))["notification_preferences"]) == {"sms": True}  # type: ignore[index]

    clamped = await user(db, fd.OUT_OF_RANGE)
    assert clamped is not None
    assert (
        clamped["session_timeout_minutes"],
        clamped["personal_cycle_length"],
        clamped["personal_period_length"],
    ) == (
        60,
        None,
        None,
    )
    assert {"out_of_range_clamped", "out_of_range_nulled"} <= changes(report, fd.OUT_OF_RANGE)

    unknown = await user(db, fd.UNKNOWN_HASHES)
    assert unknown is not None and unknown["pin_hash"] is None and unknown["enable_pin_auth"] is False
    assert "plain:" not in unknown["password_hash"]
    assert {"password_hash_unrecognised", "pin_hash_unrecognised"} <= changes(report, fd.UNKNOWN_HASHES)
    response = await client.post("/api/auth/login", json={"phone_number": "+250788100020", "password": "plain:hunter2"})
    assert response.status_code == 401

    assert (await user(db, fd.NOT_A_NUMBER))["phone_number"] is None  # type: ignore[index]
    assert "phone_not_a_number" in changes(report, fd.NOT_A_NUMBER)
    assert (await user(db, fd.FOREIGN))["phone_number"] == "+254712345678"  # type: ignore[index]
    # The admin panel's reset left the literal password "password": it still signs in (and is rehashed).
    response = await client.post("/api/auth/login", json={"phone_number": "+250788100021", "password": "password"})
    assert response.status_code == 200, response.text
    # A PIN hash with PIN sign-in switched off stays, and stays off.
    disabled = await user(db, fd.PIN_DISABLED)
    assert disabled is not None and disabled["pin_hash"].startswith("$2b$") and disabled["enable_pin_auth"] is False


async def test_history_lands_once_and_a_second_run_changes_nothing(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    first = await import_legacy(settings, flask_url)
    rows = await db.fetch("SELECT * FROM login_attempts ORDER BY created_at, event_id")
    assert len(rows) == len(fd.ATTEMPTS)
    assert {r["source"] for r in rows} == {"flask"}
    assert {r["auth_method"] for r in rows} == {None}
    assert {(r["success"], r["reason"]) for r in rows} == {(True, "ok"), (False, "legacy")}
    by_phone = {r["phone_number"] for r in rows}
    assert {"+250788100001", "+250788100005", "12345", "+254712345678", ""} == by_phone
    not_address = [r for r in rows if r["legacy_ip"] is not None]
    assert {r["legacy_ip"] for r in not_address} == {"unknown", "10.0.0.1, 41.2.3.4"}
    assert all(r["ip_address"] is None for r in not_address)
    assert first.history is not None and first.history.ip_not_address == 2 and first.history.ip_empty == 2
    assert first.history_inserted == len(fd.ATTEMPTS)

    before = await checksums(db)
    second = await import_legacy(settings, flask_url)
    assert await checksums(db) == before
    assert second.history_inserted == 0 and second.history_already_present == len(fd.ATTEMPTS)
    assert second.users_inserted == 0 and second.users_already_imported == first.users_inserted
    assert second.as_dict()["not_imported"] == first.as_dict()["not_imported"]


async def test_a_dry_run_writes_nothing_to_the_target(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    sequence_before = await db.fetchval("SELECT last_value FROM users_id_seq")
    queries_before = await db.fetchval("SELECT count(*) FROM audit_queries")
    report = await import_legacy(settings, flask_url, dry_run=True)
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    assert await db.fetchval("SELECT count(*) FROM login_attempts") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_queries") == queries_before
    assert await db.fetchval("SELECT last_value FROM users_id_seq") == sequence_before
    # ... and still says what an import would do.
    assert listed(report, fd.PAIR_OLDER) == ["phone_collision"]
    assert report.as_dict()["users"]["imported"] > 0 and report.history is not None
    assert report.history.read == len(fd.ATTEMPTS)


async def test_the_source_is_only_read(settings: Settings, flask_url: str, quirky: Any) -> None:
    snapshot = "SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u"
    before = (await quirky.fetchval(snapshot), await quirky.fetchval("SELECT count(*) FROM login_attempts"))
    await import_legacy(settings, flask_url, policy="keep-latest-activity")
    assert (await quirky.fetchval(snapshot), await quirky.fetchval("SELECT count(*) FROM login_attempts")) == before


async def test_accounts_registered_here_are_never_overwritten(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection, client: Any
) -> None:
    # Registered here before the import: one with an id the source uses, one with a source phone number.
    await db.execute("SELECT setval('users_id_seq', $1)", fd.BCRYPT_USER - 1)
    first = await registered(client, phone_number="0788700001")
    assert first["user_id"] == fd.BCRYPT_USER
    second = await registered(client, phone_number="0788100007")  # EMAIL_OLDER's number
    before = await db.fetch("SELECT * FROM users ORDER BY id")

    report = await import_legacy(settings, flask_url, policy="keep-latest-activity")
    assert listed(report, fd.BCRYPT_USER) == ["id_taken"]
    assert [dict(r) for r in await db.fetch("SELECT * FROM users WHERE source = 'api' ORDER BY id")] == [
        dict(r) for r in before
    ]
    older = await user(db, fd.EMAIL_OLDER)
    assert older is not None and older["phone_number"] is None  # imported, without the number someone holds
    (collision,) = [c for c in report.as_dict()["phone_collisions"] if c["phone"] == "+250788100007"]
    assert collision["existing_account"] == second["user_id"]


async def test_a_failed_batch_names_its_source_ids_and_a_rerun_finishes(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    # A constraint the target refuses one account with, as a broken row would.
    await db.execute("ALTER TABLE users ADD CONSTRAINT test_refuse_one CHECK (id <> 5000)")
    try:
        with pytest.raises(ImportFailed) as failure:
            await import_legacy(settings, flask_url, batch_size=10)
        batch = failure.value.batch
        assert batch.table == "users" and fd.HIGH_ID in batch.source_ids
        assert batch.source_ids == sorted(batch.source_ids) and len(batch.source_ids) <= 10
        assert failure.value.report is not None and failure.value.report.as_dict()["complete"] is False
        assert await user(db, fd.HIGH_ID) is None
    finally:
        await db.execute("ALTER TABLE users DROP CONSTRAINT test_refuse_one")
    report = await import_legacy(settings, flask_url, batch_size=10)
    assert report.as_dict()["complete"] and await user(db, fd.HIGH_ID) is not None


async def test_the_security_teams_query_log_shows_the_import(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    report = await import_legacy(settings, flask_url)
    row = await db.fetchrow("SELECT * FROM audit_queries WHERE id = $1", report.query_log_id)
    assert row is not None and row["action"] == "legacy_import" and row["origin"] == "cli"
    filters = json.loads(row["filters"])
    assert filters["users"]["inserted"] == report.users_inserted and filters["history"]["inserted"] == len(fd.ATTEMPTS)
    assert "@" in row["actor"] and row["row_count"] == report.users_inserted + report.history_inserted


async def test_the_security_team_finds_imported_failures_by_reason_legacy(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    from app.audit.history.attempts import fetch_page
    from app.audit.history.filters import parse_page_request

    await import_legacy(settings, flask_url, only="attempts")
    page = await fetch_page(db, parse_page_request({"reason": "legacy", "phone_number": "0788100001"}, "RW"))
    assert [(item.reason, item.success) for item in page.items] == [("legacy", False), ("legacy", False)]


async def test_a_failed_history_batch_names_its_source_ids(
    settings: Settings, flask_url: str, quirky: Any, db: asyncpg.Connection
) -> None:
    refused = await quirky.fetchval("SELECT id FROM login_attempts WHERE ip_address = 'unknown'")
    await db.execute("ALTER TABLE login_attempts ADD CONSTRAINT test_refuse_one CHECK (legacy_ip <> 'unknown')")
    try:
        with pytest.raises(ImportFailed) as failure:
            await import_legacy(settings, flask_url, only="attempts", batch_size=3)
        assert failure.value.batch.table == "login_attempts" and refused in failure.value.batch.source_ids
        assert len(failure.value.batch.source_ids) == 3
        # The batches before it are in; the failed one is not, not even in part.
        stored = await db.fetchval("SELECT count(*) FROM login_attempts")
        assert stored == min(failure.value.batch.source_ids) - 1
    finally:
        await db.execute("ALTER TABLE login_attempts DROP CONSTRAINT test_refuse_one")
