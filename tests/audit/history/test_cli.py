"""``ladys-essence users create-admin`` and ``audit query | export | prune`` against real Postgres."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from click.testing import CliRunner, Result

from app.__main__ import main
from app.audit.history.prune import parse_age, prune
from app.core.settings import Settings
from tests.audit.history.support import BASE_TIME, Row, insert_rows
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, plain_dsn
from tests.helpers import STRONG_PASSWORD, bearer

T = TypeVar("T")
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def cli_env(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    assert settings.database_url
    return {
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "DATA_DIR": str(tmp_path),
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def run_cli(settings: Settings, tmp_path: Path, args: list[str], stdin: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(main, args, input=stdin, env=cli_env(settings, tmp_path, **env), catch_exceptions=False)


def on_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


# ---- users create-admin ---------------------------------------------------------------------------


def test_create_admin_with_password_on_stdin(settings, tmp_path):
    result = run_cli(
        settings,
        tmp_path,
        [
            "users",
            "create-admin",
            "--phone",
            "0788555001",
            "--name",
            "Grace Mukamana",
            "--role",
            "security",
            "--password-stdin",
        ],
        stdin=STRONG_PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "created security account" in result.stdout
    row = on_db(settings, lambda c: c.fetchrow("SELECT * FROM users WHERE phone_number = '+250788555001'"))
    # A security analyst is no panel account (issue 21, item 10): not the panel's user type.
    assert row["role"] == "security" and row["name"] == "Grace Mukamana" and row["user_type"] == "parent"
    assert row["password_hash"].startswith("$argon2id$")


def test_create_admin_prompts_twice_without_echo(settings, tmp_path):
    result = run_cli(
        settings,
        tmp_path,
        ["users", "create-admin", "--phone", "+250788555002", "--name", "Eric Habimana", "--role", "admin"],
        stdin=f"{STRONG_PASSWORD}\n{STRONG_PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert STRONG_PASSWORD not in result.output
    role = on_db(settings, lambda c: c.fetchval("SELECT role FROM users WHERE phone_number = '+250788555002'"))
    assert role == "admin"


@pytest.mark.parametrize(
    ("password", "message"),
    [("password", "too common"), ("short", "at least 8"), ("Eric0788555003x", "phone number")],
)
def test_create_admin_applies_the_password_rules(settings, tmp_path, password, message):
    result = run_cli(
        settings,
        tmp_path,
        ["users", "create-admin", "--phone", "0788555003", "--name", "Eric", "--role", "admin", "--password-stdin"],
        stdin=password + "\n",
    )
    assert result.exit_code == 2
    assert message in result.output
    assert on_db(settings, lambda c: c.fetchval("SELECT count(*) FROM users")) == 0


def test_create_admin_refuses_bad_input(settings, tmp_path):
    args = ["users", "create-admin", "--name", "X Y", "--password-stdin"]
    bad_phone = run_cli(settings, tmp_path, [*args, "--phone", "12", "--role", "admin"], stdin=STRONG_PASSWORD)
    assert bad_phone.exit_code == 2 and "--phone" in bad_phone.output
    bad_role = run_cli(settings, tmp_path, [*args, "--phone", "0788555004", "--role", "user"], stdin=STRONG_PASSWORD)
    assert bad_role.exit_code == 2 and "--role" in bad_role.output


def test_an_existing_account_is_promoted_only_when_asked(settings, tmp_path):
    args = [
        "users",
        "create-admin",
        "--phone",
        "0788555005",
        "--name",
        "Alice",
        "--role",
        "security",
        "--password-stdin",
    ]
    assert run_cli(settings, tmp_path, args, stdin=STRONG_PASSWORD).exit_code == 0
    again = [*args[:-3], "--role", "admin", "--password-stdin"]
    refused = run_cli(settings, tmp_path, again, stdin=STRONG_PASSWORD)
    assert refused.exit_code == 1 and "--promote" in refused.output
    promoted = run_cli(settings, tmp_path, [*again, "--promote", "--yes-this-account-is-theirs"], stdin=STRONG_PASSWORD)
    assert promoted.exit_code == 0, promoted.output
    assert (
        on_db(settings, lambda c: c.fetchval("SELECT role FROM users WHERE phone_number = '+250788555005'")) == "admin"
    )


async def test_an_account_made_at_the_shell_can_use_the_audit_api(client, settings, tmp_path):
    args = [
        "users",
        "create-admin",
        "--phone",
        "0788555006",
        "--name",
        "Diane",
        "--role",
        "security",
        "--password-stdin",
    ]
    result = await asyncio.to_thread(run_cli, settings, tmp_path, args, STRONG_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    login = await client.post("/api/auth/login", json={"phone_number": "0788555006", "password": STRONG_PASSWORD})
    assert login.status_code == 200, login.text
    response = await client.get("/api/audit/login-attempts", headers=bearer(login.json()["access_token"]))
    assert response.status_code == 200


# ---- audit query / export -------------------------------------------------------------------------


def insert(settings: Settings, rows: list[Row]) -> list[Row]:
    return on_db(settings, lambda c: insert_rows(c, rows))


def test_query_prints_a_table_and_pages(settings, tmp_path):
    rows = insert(
        settings,
        [
            Row(
                created_at=BASE_TIME + n * datetime.timedelta(minutes=1),
                user_agent="evil\x1b[2Jagent" if n == 2 else "ok",
            )
            for n in range(3)
        ]
        + [Row(phone_number="+250788999999")],
    )
    first = run_cli(settings, tmp_path, ["audit", "query", "--phone", "0788000001", "--limit", "2"])
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[0].split() == [
        "CREATED",
        "(UTC)",
        "PHONE",
        "IP",
        "OUTCOME",
        "REASON",
        "METHOD",
        "USER",
        "USER",
        "AGENT",
    ]
    assert lines[1].startswith("2026-11-20 12:02:00  +250788000001")
    assert "evil\\x1b[2Jagent" in lines[1] and "\x1b" not in first.stdout
    assert "failure" in lines[1] and "invalid_credentials" in lines[1]
    cursor = lines[-1].rsplit("--cursor ", 1)[1]
    rest = run_cli(
        settings, tmp_path, ["audit", "query", "--phone", "0788000001", "--limit", "2", "--cursor", cursor, "--json"]
    )
    page = json.loads(rest.stdout)
    assert [item["id"] for item in page["items"]] == [rows[0].id] and page["next_cursor"] is None
    records = on_db(settings, lambda c: c.fetch("SELECT origin, action, actor, filters FROM audit_queries ORDER BY id"))
    assert [(r["origin"], r["action"]) for r in records] == [("cli", "list"), ("cli", "list")]
    assert "@" in records[0]["actor"]
    assert json.loads(records[0]["filters"]) == {"phone_number": "+250788000001", "limit": 2}


def test_query_names_the_option_of_each_problem(settings, tmp_path):
    result = run_cli(
        settings, tmp_path, ["audit", "query", "--since", "yesterday", "--ip", "300.1.2.3", "--limit", "0"]
    )
    assert result.exit_code == 2
    for option in ("--since", "--ip", "--limit"):
        assert option + ":" in result.output


def test_export_to_a_file(settings, tmp_path):
    insert(settings, [Row(user_agent="=cmd|' /C calc'!A0"), Row(created_at=BASE_TIME + DAY, success=True, reason="ok")])
    target = tmp_path / "attempts.csv"
    result = run_cli(settings, tmp_path, ["audit", "export", "--success", "false", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "exported 1 rows" in result.stderr
    table = list(csv.DictReader(io.StringIO(target.read_text(), newline="")))
    assert len(table) == 1
    assert table[0]["user_agent"] == "'=cmd|' /C calc'!A0" and table[0]["phone_number"] == "'+250788000001"
    count = on_db(settings, lambda c: c.fetchval("SELECT row_count FROM audit_queries WHERE action = 'export'"))
    assert count == 1


def test_export_ndjson_to_stdout(settings, tmp_path):
    rows = insert(settings, [Row(created_at=BASE_TIME + n * DAY) for n in range(3)])
    result = run_cli(settings, tmp_path, ["audit", "export", "--format", "ndjson", "--since", "2026-11-21"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [rows[2].id, rows[1].id]


# ---- prune ----------------------------------------------------------------------------------------


async def test_prune_removes_exactly_the_rows_before_the_cutoff_in_batches(db):
    cutoff = datetime.datetime(2025, 11, 27, 10, 0, tzinfo=datetime.UTC)
    tick = datetime.timedelta(microseconds=1)
    old = [Row(created_at=cutoff - n * DAY - tick) for n in range(10)]  # ties broken by id, across batches
    old += [Row(created_at=cutoff - tick), Row(created_at=cutoff - tick)]
    kept = [Row(created_at=cutoff), Row(created_at=cutoff + tick), Row(created_at=cutoff + 400 * DAY)]
    await insert_rows(db, old + kept)
    heard: list[int] = []
    done = await prune(db, cutoff, batch_size=5, progress=lambda p: heard.append(p.deleted))
    assert done.deleted == 12
    assert heard == [5, 10, 12] and done.batches == 3
    remaining = {record["id"] for record in await db.fetch("SELECT id FROM login_attempts")}
    assert remaining == {row.id for row in kept}
    again = await prune(db, cutoff, batch_size=5)
    assert again.deleted == 0 and again.batches == 1


async def test_prune_batches_hold_no_lock_that_stops_the_writer(db, settings):
    """While a prune runs, inserts go through (each batch is its own short transaction)."""
    cutoff = NOW - 365 * DAY
    await db.execute(
        "INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason)"
        " SELECT gen_random_uuid(), $1::timestamptz - i * interval '1 second', '+250788000001', false,"
        " 'invalid_request' FROM generate_series(1, 20000) AS i",
        cutoff,
    )
    writer = await asyncpg.connect(plain_dsn(settings))
    try:
        task = asyncio.create_task(prune(db, cutoff, batch_size=500))
        inserted = 0
        while not task.done():
            await asyncio.wait_for(insert_rows(writer, [Row(created_at=NOW)]), timeout=2)
            inserted += 1
        assert (await task).deleted == 20000
        assert inserted > 1
    finally:
        await writer.close()


def test_prune_command_uses_the_retention_setting(settings, tmp_path):
    ages = [400, 31, 29, 1]
    rows = insert(settings, [Row(created_at=NOW - days * DAY) for days in ages])
    dry = run_cli(settings, tmp_path, ["audit", "prune", "--dry-run"], AUDIT_RETENTION_DAYS="30")
    assert dry.exit_code == 0 and "2 rows are older than" in dry.stdout
    result = run_cli(settings, tmp_path, ["audit", "prune", "--batch-size", "1"], AUDIT_RETENTION_DAYS="30")
    assert result.exit_code == 0, result.output
    assert "deleted 2 rows" in result.stdout
    remaining = on_db(settings, lambda c: c.fetch("SELECT id FROM login_attempts ORDER BY id"))
    assert [r["id"] for r in remaining] == [rows[2].id, rows[3].id]
    record = on_db(settings, lambda c: c.fetchrow("SELECT * FROM audit_queries WHERE action = 'prune'"))
    assert record["row_count"] == 2 and json.loads(record["filters"])["older_than"] == "30d"
    explicit = run_cli(settings, tmp_path, ["audit", "prune", "--older-than", "2d"])
    assert "deleted 1 rows" in explicit.stdout


def test_prune_age_forms():
    assert parse_age("365d") == 365 * DAY
    assert parse_age("36h") == datetime.timedelta(hours=36)
    assert parse_age("2w") == 14 * DAY
    assert parse_age("90") == 90 * DAY
    for bad in ("0d", "-3d", "1y", "", "d"):
        with pytest.raises(ValueError):
            parse_age(bad)


def test_prune_refuses_a_bad_age(settings, tmp_path):
    result = run_cli(settings, tmp_path, ["audit", "prune", "--older-than", "1y"])
    assert result.exit_code == 2 and "--older-than" in result.output
