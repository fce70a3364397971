"""``ladys-essence audit partitions ensure | list``: the monthly partitions of ``login_attempts``.

The audit writer creates months ahead by itself (hourly); these commands are for the operator:
``ensure`` before a writer has run (or for a longer horizon), ``list`` to see ranges and sizes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from app.audit.history.commands import _database, _dsn
from app.core.cli import load_settings


@click.group("partitions", help="The monthly partitions of login_attempts.")
def partitions() -> None:
    pass


@partitions.command("ensure", help="Create this month's and the next months' partitions that are missing.")
@click.option(
    "--months-ahead",
    type=click.IntRange(1, 120),
    default=None,
    help="Months after this one (default: AUDIT_PARTITIONS_AHEAD).",
)
def ensure_command(months_ahead: int | None) -> None:
    from app.audit.pipeline.partitions import ensure_partitions

    settings = load_settings()
    ahead = months_ahead or settings.audit_partitions_ahead

    async def run(dsn: str) -> list[str]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return await ensure_partitions(conn, ahead)
        finally:
            await conn.close()

    with _database(settings) as resolved:
        created = asyncio.run(run(_dsn(resolved)))
    click.echo(f"created {', '.join(created)}" if created else f"every partition up to {ahead} months ahead exists")


@partitions.command("list", help="Each partition, its range (UTC) and its size.")
def list_command() -> None:
    from app.audit.pipeline.partitions import Partition, list_partitions

    settings = load_settings()

    async def run(dsn: str) -> list[Partition]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return await list_partitions(conn)
        finally:
            await conn.close()

    with _database(settings) as resolved:
        found = asyncio.run(run(_dsn(resolved)))
    for partition in found:
        click.echo(
            f"{partition.name:32}  {_range(partition):45}  ~{partition.estimated_rows:>12,} rows  "
            f"{partition.bytes / 2**20:>10.1f} MiB"
        )


def _range(partition: Any) -> str:
    if partition.is_default:
        return "DEFAULT (anything outside the others)"
    lower = partition.lower.isoformat() if partition.lower else "MINVALUE"
    upper = partition.upper.isoformat() if partition.upper else "MAXVALUE"
    return f"[{lower}, {upper})"
