"""Killed with SIGKILL mid-run and run again, the import ends exactly where one clean run ends.

The command runs as a real process (``python -m app legacy import``) and is killed while it writes
the accounts, or while it writes the history; the rerun's counts and checksums must equal those of
an uninterrupted run of the same source into a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from app.core.settings import Settings
from app.db import migrations
from tests.conftest import PROJECT_ROOT, TEST_JWT_SECRET, TEST_PIN_PEPPER, plain_dsn
from tests.legacy import flask_data as fd
from tests.legacy.test_import import checksums

# Enough that a kill lands mid-table (the import writes batches of 100: 20 of accounts, 200 of history,
# and the kill comes as soon as the first batch shows) and that every collision and garbage pattern of
# the seed below occurs many times; five full imports run, so more only costs time.
USERS = 2000
ATTEMPTS = 20_000
SEED_USERS = """
INSERT INTO users (id, name, phone_number, email, password_hash, user_type, created_at, last_activity, pin_hash,
                   enable_pin_auth, account_type, notification_preferences)
SELECT i, 'User ' || i,
    CASE WHEN i % 50 = 0 THEN NULL
         WHEN i % 3 = 0 THEN '0788' || lpad(i::text, 6, '0')
         WHEN i % 3 = 1 THEN '+250788' || lpad(i::text, 6, '0')
         ELSE '250788' || lpad((i - 1)::text, 6, '0') END,  -- the previous account's number: a collision
    CASE i % 4 WHEN 0 THEN 'User' || (i / 4) || '@x.rw' WHEN 1 THEN 'user' || (i / 4) || '@x.rw' END,
    $1, CASE WHEN i % 97 = 0 THEN 'admin' ELSE 'adolescent' END,
    timestamp '2020-01-01' + i * interval '1 hour',
    CASE WHEN i % 5 = 0 THEN NULL ELSE timestamp '2024-01-01' + (i % 17) * interval '1 day' END,
    CASE WHEN i % 2 = 0 THEN $2 END, i % 2 = 0,
    CASE WHEN i % 50 = 0 THEN 'family_managed' ELSE 'self_registered' END,
    CASE i % 3 WHEN 0 THEN '{"sms": true}' WHEN 1 THEN 'not json' END
FROM generate_series(1, $3) AS i
"""
SEED_ATTEMPTS = """
INSERT INTO login_attempts (phone_number, success, ip_address, created_at)
SELECT CASE g % 4 WHEN 0 THEN '0788' || lpad((g % 5000)::text, 6, '0')
                  WHEN 1 THEN '+250788' || lpad((g % 5000)::text, 6, '0')
                  WHEN 2 THEN 'garbage' || (g % 7)
                  ELSE '250788' || lpad((g % 5000)::text, 6, '0') END,
    g % 10 = 0,
    CASE g % 6 WHEN 0 THEN '41.186.' || (g % 250) || '.' || (g % 200) WHEN 1 THEN '' WHEN 3 THEN 'unknown'
               WHEN 4 THEN '::1' WHEN 5 THEN '10.0.0.' || (g % 250) END,
    CASE WHEN g % 1000 = 0 THEN NULL ELSE timestamp '2024-01-01' + g * interval '1 minute' END
FROM generate_series(1, $1) AS g
"""


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SEED_USERS, fd.bcrypt_hash("Umuganda-Kigali-42"), fd.bcrypt_hash(fd.WEB_PIN), USERS)
        await conn.execute(SEED_ATTEMPTS, ATTEMPTS)
    finally:
        await conn.close()


async def _count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
        return value
    finally:
        await conn.close()


async def _checksums(url: str) -> tuple[object, ...]:
    conn = await asyncpg.connect(url)
    try:
        return await checksums(conn)
    finally:
        await conn.close()


def _command(target: Settings, source_url: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": plain_dsn(target),
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "app", "legacy", "import", "--from", source_url, "--batch-size", "100"]
    return command, env


def _import(target: Settings, source_url: str, tmp_path: Path) -> None:
    command, env = _command(target, source_url, tmp_path)
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def _import_killed(target: Settings, source_url: str, tmp_path: Path, table: str) -> int:
    """Start the import, SIGKILL it once ``table`` holds some rows but not all; the count at the kill."""
    command, env = _command(target, source_url, tmp_path)
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if _run(_count(plain_dsn(target), table)):
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    at_kill = _run(_count(plain_dsn(target), table))
    assert isinstance(at_kill, int)
    return at_kill


@pytest.fixture(scope="module")
def seeded_flask_url(base_settings: Settings, flask_schema_sql: str) -> object:
    from tests.legacy.conftest import make_flask_database

    generator = make_flask_database(base_settings, flask_schema_sql)
    url = next(generator)
    _run(_seed(url))
    yield url
    generator.close()


@pytest.fixture(scope="module")
def clean_run(base_settings: Settings, seeded_flask_url: str, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Counts and checksums of one uninterrupted run into a fresh database."""
    with migrations.scratch_database(base_settings) as clean:
        migrations.upgrade(clean)
        _import(clean, seeded_flask_url, tmp_path_factory.mktemp("clean"))
        return _run(_checksums(plain_dsn(clean)))


@pytest.mark.slow
@pytest.mark.parametrize("table", ["users", "login_attempts"])
def test_sigkill_mid_run_then_rerun_equals_one_clean_run(
    settings: Settings, seeded_flask_url: str, clean_run: tuple[object, ...], tmp_path: Path, table: str
) -> None:
    at_kill = _import_killed(settings, seeded_flask_url, tmp_path, table)
    users_at_kill = _run(_count(plain_dsn(settings), "users"))
    assert 0 < at_kill < (clean_run[0] if table == "users" else clean_run[2])  # type: ignore[operator]
    assert isinstance(users_at_kill, int) and users_at_kill > 0
    _import(settings, seeded_flask_url, tmp_path)
    assert _run(_checksums(plain_dsn(settings))) == clean_run
    # And a further run changes nothing.
    _import(settings, seeded_flask_url, tmp_path)
    assert _run(_checksums(plain_dsn(settings))) == clean_run
