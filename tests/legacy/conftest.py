"""A Flask-era source database per test, built from the Flask-era schema kept beside these tests (fixtures/)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.core.settings import Settings
from app.db import migrations
from app.legacy.importer import ImportOptions, run_import
from app.legacy.report import Report
from tests.conftest import plain_dsn

FLASK_SCHEMA = Path(__file__).parent / "fixtures" / "flask_schema.sql"


@pytest.fixture(scope="session")
def flask_schema_sql() -> str:
    return FLASK_SCHEMA.read_text()


def make_flask_database(base_settings: Settings, schema_sql: str) -> Iterator[str]:
    with migrations.scratch_database(base_settings, name=f"le_flask_{uuid.uuid4().hex[:10]}") as source:

        async def create() -> None:
            conn = await asyncpg.connect(plain_dsn(source))
            try:
                await conn.execute(schema_sql)
            finally:
                await conn.close()

        asyncio.run(create())
        yield plain_dsn(source)


@pytest.fixture
def flask_url(base_settings: Settings, flask_schema_sql: str) -> Iterator[str]:
    """An empty Flask-era database (fixtures/flask_schema.sql applied), dropped after the test."""
    yield from make_flask_database(base_settings, flask_schema_sql)


@pytest.fixture
async def flask(flask_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(flask_url)
    yield conn
    await conn.close()


async def import_legacy(settings: Settings, source_url: str, **options: Any) -> Report:
    options.setdefault("region", settings.default_phone_region)
    options.setdefault("argon2_memory_kib", settings.argon2_memory_kib)
    options.setdefault("argon2_time_cost", settings.argon2_time_cost)
    return await run_import(plain_dsn(settings), ImportOptions(source_url=source_url, **options))
