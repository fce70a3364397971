"""``ladys-essence sessions prune``: delete refresh tokens of sessions that ended long ago."""

from __future__ import annotations

import asyncio
import datetime

import click

from app.core.cli import load_settings


@click.group(help="Sessions (refresh tokens): retention.")
def sessions() -> None:
    pass


@sessions.command(
    "prune", help="Delete sessions (and their refresh tokens) that ended or expired before the retention period."
)
@click.option("--older-than", default=None, help="Age such as 365d, 36h or 52w (default: AUDIT_RETENTION_DAYS days).")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune(older_than: str | None, batch_size: int, dry_run: bool) -> None:
    import asyncpg

    from app.audit.history.prune import parse_age
    from app.core.embedded import servers_for
    from app.core.postgres import plain_dsn
    from app.sessions.prune import count_ended_before, prune_ended_sessions

    settings = load_settings()
    try:
        age = parse_age(older_than or f"{settings.audit_retention_days}d")
    except ValueError as exc:
        raise click.UsageError(f"--older-than: {exc}") from exc
    cutoff = datetime.datetime.now(datetime.UTC) - age

    async def run(dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            if dry_run:
                count = await count_ended_before(conn, cutoff)
                click.echo(f"{count:,} sessions ended before {cutoff.isoformat()} (dry run: nothing deleted)")
                return
            deleted = await prune_ended_sessions(conn, cutoff, batch_size)
            click.echo(
                f"deleted {deleted:,} sessions that ended before {cutoff.isoformat()}, with their refresh tokens"
            )
        finally:
            await conn.close()

    with servers_for(settings, redis=False) as resolved:
        assert resolved.database_url
        asyncio.run(run(plain_dsn(resolved.database_url)))
