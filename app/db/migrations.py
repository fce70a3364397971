"""Upgrade, downgrade and check the schema with Alembic (through advanced-alchemy's config)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec
from advanced_alchemy.alembic.commands import AlembicCommands
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from app.core.postgres import database_url_with, plain_dsn
from app.core.settings import Settings
from app.db.config import sqlalchemy_config
from app.db.models import metadata


def _commands(settings: Settings) -> AlembicCommands:
    return AlembicCommands(sqlalchemy_config=sqlalchemy_config(settings, pool=False))


def upgrade(settings: Settings, revision: str = "head") -> None:
    _commands(settings).upgrade(revision=revision)


def downgrade(settings: Settings, revision: str = "-1") -> None:
    _commands(settings).downgrade(revision=revision)


def heads(settings: Settings) -> list[str]:
    config = _commands(settings)._get_alembic_command_config()
    return list(ScriptDirectory.from_config(config).get_heads())


@dataclass
class SchemaCheck:
    heads: list[str]
    current: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return len(self.heads) == 1 and not self.differences

    @property
    def database_current(self) -> bool:
        return self.current == self.heads


def check(settings: Settings) -> SchemaCheck:
    """One head, and the models agreeing with what the migrations build.

    The comparison runs on a scratch database migrated from nothing, so it says whether the
    migrations and models agree whatever state the configured database is in; that database's
    own revision is reported alongside.
    """
    result = SchemaCheck(heads=heads(settings))
    result.current = current_revisions(settings)
    with scratch_database(settings) as scratch:
        upgrade(scratch)
        result.differences = _differences(scratch)
    return result


def current_revisions(settings: Settings) -> list[str]:
    """The revisions the database is at (empty for a database never migrated)."""
    found: list[str] = []

    def read(connection: Connection) -> None:
        found.extend(MigrationContext.configure(connection).get_current_heads())

    _run_sync(settings, read)
    return found


def _differences(settings: Settings) -> list[str]:
    found: list[str] = []

    def compare(connection: Connection) -> None:
        partitions = {row[0] for row in connection.execute(text(PARTITIONS))}
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                # A partition is its parent's storage, not a table of the models: each is compared as the parent.
                "include_name": lambda name, kind, _parent: not (kind == "table" and name in partitions),
            },
        )
        found.extend(repr(diff) for diff in compare_metadata(context, metadata))
        found.extend(_partitioning_differences(connection))

    _run_sync(settings, compare)
    return found


PARTITIONS = "SELECT relname FROM pg_class WHERE relispartition AND relkind IN ('r', 'p')"
PARTITION_KEYS = "SELECT relname, pg_get_partkeydef(oid) FROM pg_class WHERE relkind = 'p' AND NOT relispartition"


def _partitioning_differences(connection: Connection) -> list[str]:
    """Autogenerate does not compare partitioning: the models' ``postgresql_partition_by`` against the database's."""
    actual = {name: key for name, key in connection.execute(text(PARTITION_KEYS))}
    found = []
    for table in metadata.tables.values():
        wanted = table.dialect_options["postgresql"].get("partition_by")
        have = actual.get(table.name)
        if " ".join((wanted or "").split()).lower() != " ".join((have or "").split()).lower():
            found.append(f"partition key of {table.name}: models {wanted!r}, database {have!r}")
    return found


def _run_sync(settings: Settings, fn: Callable[[Connection], None]) -> None:
    async def run() -> None:
        engine = sqlalchemy_config(settings, pool=False).get_engine()
        try:
            async with engine.connect() as connection:
                await connection.run_sync(fn)
        finally:
            await engine.dispose()

    asyncio.run(run())


@contextmanager
def scratch_database(settings: Settings, name: str | None = None) -> Iterator[Settings]:
    """A fresh, empty database on the same server, dropped afterwards."""
    import asyncpg

    assert settings.database_url
    name = name or f"le_scratch_{uuid.uuid4().hex[:12]}"
    admin_dsn = plain_dsn(database_url_with(settings.database_url, "postgres"))

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield msgspec.structs.replace(settings, database_url=database_url_with(settings.database_url, name))
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
