"""Migrations on real Postgres: one head, a full round trip, and agreement with the models."""

import asyncio

import asyncpg

from app.core.postgres import plain_dsn
from app.db import migrations


def _tables(settings):
    async def read():
        conn = await asyncpg.connect(plain_dsn(settings.database_url))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row["tablename"] for row in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_exactly_one_head(base_settings):
    assert len(migrations.heads(base_settings)) == 1


def test_upgrade_downgrade_upgrade_round_trip(base_settings):
    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch)
        assert {"users", "refresh_tokens", "login_attempts", "alembic_version"} <= _tables(scratch)
        migrations.downgrade(scratch, "base")
        assert _tables(scratch) <= {"alembic_version"}
        migrations.upgrade(scratch)
        assert {"users", "refresh_tokens", "login_attempts"} <= _tables(scratch)


def test_models_match_migrations(base_settings):
    result = migrations.check(base_settings)
    assert result.differences == []
    assert result.ok and result.database_current
