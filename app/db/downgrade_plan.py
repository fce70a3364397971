"""What a downgrade would delete, found by rehearsing it, so ``db downgrade`` can say so first.

The rehearsal runs on a scratch database migrated to the configured database's revision, then
downgraded to the target: the tables and columns that exist before and not after are what the real
downgrade drops, whatever the migration files say about themselves. The real database is only read
(its revision, and the row counts of the tables that would go).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

from app.core.postgres import plain_dsn
from app.core.settings import Settings
from app.db import migrations

_COLUMNS = """
    SELECT table_name, column_name FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name <> 'alembic_version'
"""


@dataclass
class DowngradePlan:
    current: list[str]
    dropped_tables: dict[str, int] = field(default_factory=dict)  # table -> rows it holds now
    dropped_columns: list[str] = field(default_factory=list)  # "table.column" of tables that stay

    @property
    def loses_data(self) -> bool:
        return bool(self.dropped_tables or self.dropped_columns)

    def describe(self) -> list[str]:
        lines = [f"drops table {name} ({rows} rows)" for name, rows in sorted(self.dropped_tables.items())]
        lines += [f"drops column {name}" for name in self.dropped_columns]
        return lines


async def _schema(settings: Settings) -> dict[str, set[str]]:
    assert settings.database_url
    conn = await asyncpg.connect(plain_dsn(settings.database_url))
    try:
        tables: dict[str, set[str]] = {}
        for row in await conn.fetch(_COLUMNS):
            tables.setdefault(row["table_name"], set()).add(row["column_name"])
        return tables
    finally:
        await conn.close()


async def _row_counts(settings: Settings, tables: list[str]) -> dict[str, int]:
    assert settings.database_url
    conn = await asyncpg.connect(plain_dsn(settings.database_url))
    try:
        counts: dict[str, int] = {}
        for name in tables:
            quoted = await conn.fetchval("SELECT quote_ident($1)", name)
            counts[name] = await conn.fetchval(f"SELECT count(*) FROM {quoted}")  # noqa: S608 (quoted identifier)
        return counts
    finally:
        await conn.close()


def plan_downgrade(settings: Settings, revision: str) -> DowngradePlan:
    """Rehearse ``downgrade(revision)`` from the database's current revision on a scratch database."""
    current = migrations.current_revisions(settings)
    plan = DowngradePlan(current=current)
    if not current:
        return plan
    with migrations.scratch_database(settings) as scratch:
        for head in current:
            migrations.upgrade(scratch, head)
        before = asyncio.run(_schema(scratch))
        migrations.downgrade(scratch, revision)
        after = asyncio.run(_schema(scratch))
    gone = sorted(name for name in before if name not in after)
    plan.dropped_tables = asyncio.run(_row_counts(settings, gone))
    plan.dropped_columns = sorted(
        f"{table}.{column}" for table, columns in after.items() for column in before.get(table, set()) - columns
    )
    return plan
