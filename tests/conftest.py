"""Real Postgres and Redis for the whole suite.

``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` name servers to use; without them embedded ones start
in a temporary directory. Either way the run creates its own database (dropped at the end) and
every test gets its own Redis key prefix and empty tables.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.asgi import create_app, served
from app.core import postgres
from app.core.embedded import EmbeddedPostgres, EmbeddedRedis
from app.core.settings import Settings
from app.db import migrations

TEST_JWT_SECRET = "test-jwt-secret-" + "x" * 32
TEST_PIN_PEPPER = "test-pin-pepper-" + "y" * 32
TEST_SIGNING_KEYS_SECRET = "test-signing-keys-" + "z" * 32
TABLES = (
    "login_attempts",
    "login_attempts_hourly",
    "refresh_tokens",
    "sessions",
    "users",
    "account_events",
    "admin_actions",
    "webhook_endpoints",
    "webhook_deliveries",
)


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    started: list[Any] = []
    urls = {"database": os.environ.get("TEST_DATABASE_URL", ""), "redis": os.environ.get("TEST_REDIS_URL", "")}
    base = tmp_path_factory.mktemp("servers")
    try:
        if not urls["database"]:
            postgres = EmbeddedPostgres(base / "postgres", database="postgres")
            urls["database"] = postgres.start()
            started.append(postgres)
        if not urls["redis"]:
            redis = EmbeddedRedis(base / "redis", appendonly=False)
            urls["redis"] = redis.start()
            started.append(redis)
        yield urls
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="session")
def base_settings(server_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at this run's own, freshly migrated database."""
    settings = Settings.from_env(
        {},
        app_env="test",
        database_url=server_urls["database"],
        redis_url=server_urls["redis"],
        data_dir=str(tmp_path_factory.mktemp("data")),
        jwt_secret=TEST_JWT_SECRET,
        pin_pepper=TEST_PIN_PEPPER,
        signing_keys_secret=TEST_SIGNING_KEYS_SECRET,
        # Lighter argon2 than production keeps the suite fast; test_passwords checks the defaults.
        argon2_memory_kib=1024,
        argon2_time_cost=1,
        # No Flask-era cost-12 bcrypt to pad failures to (test_hash_kind_timing sets it).
        legacy_bcrypt_rounds=4,
        # The writer's idle read blocks this long, and an app's shutdown waits for it: 200 ms by
        # default, paid by every test that starts an app. Tests of batching set their own.
        audit_flush_ms=20,
        # The suite's Redis keeps nothing between runs; tests that build production apps start on it.
        redis_persistence_check="off",
        # A webhook deliverer per app would add connections and a poll to every test that starts one;
        # tests/webhooks turns it on where it is what is tested.
        webhooks_enabled=False,
    )
    with migrations.scratch_database(settings, name=f"le_test_{uuid.uuid4().hex[:10]}") as run_settings:
        migrations.upgrade(run_settings)
        asyncio.run(_first_signing_key(run_settings))
        yield run_settings


async def _first_signing_key(settings: Settings) -> None:
    """The key a deployment makes with `keys ensure`, so apps built in production mode can start."""
    from app.db.config import sqlalchemy_config
    from app.keys.store import create_first_key

    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        await create_first_key(engine, settings)
    finally:
        await engine.dispose()


def plain_dsn(settings: Settings) -> str:
    assert settings.database_url
    return postgres.plain_dsn(settings.database_url)


@pytest.fixture
def settings(base_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Per test: a Redis key prefix of its own, and empty tables afterwards."""
    import msgspec

    prefix = f"le-test:{uuid.uuid4().hex[:12]}:"
    overrides = getattr(request, "param", {}) or {}
    yield msgspec.structs.replace(base_settings, redis_key_prefix=prefix, **overrides)
    asyncio.run(_truncate(base_settings))


# What ``TRUNCATE <TABLES> RESTART IDENTITY CASCADE`` empties: TABLES, every table whose foreign keys
# reach them, and the sequences those own.
_CASCADE = """
WITH RECURSIVE cascade(rel) AS (
    SELECT unnest($1::text[]::regclass[])
    UNION
    SELECT c.conrelid::regclass FROM pg_constraint c JOIN cascade ON c.confrelid = cascade.rel WHERE c.contype = 'f'
)
SELECT array_agg(rel::text) AS tables,
       (SELECT array_agg(d.objid::regclass::text) FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
         WHERE s.relkind = 'S' AND d.refobjid IN (SELECT rel FROM cascade)) AS sequences
FROM cascade
"""
FEW_ROWS = 5000  # a table holding more is truncated: deleting many rows costs more and leaves them dead
_emptied: dict[str, tuple[list[str], list[str]]] = {}


async def _truncate(settings: Settings) -> None:
    """Empty TABLES as ``TRUNCATE ... RESTART IDENTITY CASCADE`` would, but with DELETE while they are small.

    TRUNCATE makes new files for every table and index it empties: 140-320 ms a test on a loaded
    machine, after hundreds of tests that wrote a few rows each. The DELETEs run with triggers and
    foreign-key checks off (``session_replication_role = replica``), as TRUNCATE fires none either,
    and the sequences restart where they started.
    """
    conn = await asyncpg.connect(plain_dsn(settings))
    try:
        dsn = plain_dsn(settings)
        if dsn not in _emptied:
            row = await conn.fetchrow(_CASCADE, list(TABLES))
            _emptied[dsn] = (list(row["tables"]), list(row["sequences"] or []))
        tables, sequences = _emptied[dsn]
        many = " OR ".join(f"EXISTS (SELECT FROM {table} OFFSET {FEW_ROWS})" for table in tables)
        if not await conn.fetchval(f"SELECT {many}"):
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL session_replication_role = replica")  # a superuser's right
                    await conn.execute("; ".join(f"DELETE FROM {table}" for table in tables))  # noqa: S608 (catalogue names)
                    await conn.execute(
                        "SELECT setval(seqrelid, seqstart, false) FROM pg_sequence"
                        " WHERE seqrelid = ANY($1::text[]::regclass[])",
                        sequences,
                    )
                return
            except asyncpg.InsufficientPrivilegeError:
                pass
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


def from_loopback(app: Any) -> Any:
    """Requests appear to come from 127.0.0.1 (Litestar's test client says "testclient")."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": ("127.0.0.1", 50000)}
        await app(scope, receive, send)

    return asgi


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    # As create_asgi_app serves it: CORS, then the login gate.
    async with AsyncTestClient(app=from_loopback(served(app)), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, for checking what the service wrote."""
    conn = await asyncpg.connect(plain_dsn(settings))
    yield conn
    await conn.close()


PROJECT_ROOT = Path(__file__).resolve().parent.parent
