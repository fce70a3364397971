"""``ladys-essence audit query | export | prune``: the security team's API at a shell.

Same filters and checks as the API (app/audit/history/filters.py), same record of who looked
(``audit_queries``, with ``user@host`` as the actor). Heavy imports wait until a command runs.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import IO, Any, TypeVar

import click

from app.core.cli import load_settings
from app.core.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Option name -> the filter it sets (the API's parameter names).
FILTER_OPTIONS = {
    "phone": "phone_number",
    "ip": "ip",
    "success": "success",
    "reason": "reason",
    "auth_method": "auth_method",
    "channel": "channel",
    "user_id": "user_id",
    "since": "since",
    "until": "until",
}
OPTION_FOR_FIELD = {field: "--" + option.replace("_", "-") for option, field in FILTER_OPTIONS.items()}
OPTION_FOR_FIELD.update(limit="--limit", cursor="--cursor", format="--format")


def filter_options(fn: F) -> F:
    options = [
        click.option("--phone", help="Phone number, any form (normalised as at sign-in)."),
        click.option("--ip", help="Address or CIDR network, e.g. 41.186.0.0/16."),
        click.option("--success", help="true or false."),
        click.option("--reason", help="Reason, or several separated by commas."),
        click.option("--auth-method", help="password or pin."),
        click.option("--channel", help="http (the login endpoint) or ussd (the USSD gateway)."),
        click.option("--user-id", help="Account id."),
        click.option("--since", help="ISO-8601, inclusive (UTC without an offset)."),
        click.option("--until", help="ISO-8601, exclusive."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _database(settings: Settings) -> AbstractContextManager[Settings]:
    from app.core.embedded import servers_for

    manager: AbstractContextManager[Settings] = servers_for(settings, redis=False)
    return manager


def _dsn(settings: Settings) -> str:
    from app.core.postgres import plain_dsn

    assert settings.database_url
    return plain_dsn(settings.database_url)


def _filter_params(options: dict[str, Any]) -> dict[str, str | None]:
    return {field: options.get(option) for option, field in FILTER_OPTIONS.items()}


def _usage_error(exc: Exception) -> click.ClickException:
    from app.core.errors import ValidationFailed

    if isinstance(exc, ValidationFailed):
        lines = [f"{OPTION_FOR_FIELD.get(e.field, e.field)}: {e.message}" for e in exc.errors]
        return click.UsageError("\n".join(lines))
    return click.ClickException(str(exc))


def printable(text: str | None, width: int | None = None) -> str:
    """Control characters (a user agent can carry terminal escapes) shown escaped, then cut to ``width``."""
    if text is None:
        return "-"
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if width is not None and len(shown) > width:
        return shown[: width - 1] + "…"
    return shown


TABLE_COLUMNS = (
    ("CREATED (UTC)", 19),
    ("PHONE", 16),
    ("IP", 24),
    ("OUTCOME", 7),
    ("REASON", 19),
    ("METHOD", 8),
    ("USER", 8),
    ("USER AGENT", 0),
)


def format_table(items: list[Any]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if width else cell for cell, (_, width) in zip(cells, TABLE_COLUMNS, strict=True)
        )

    lines = [line([title for title, _ in TABLE_COLUMNS])]
    for item in items:
        created = item.created_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            line(
                [
                    created,
                    printable(item.phone_number, 16),
                    printable(item.ip_address, 24),
                    item.outcome,
                    item.reason,
                    item.auth_method or "-",
                    str(item.user_id) if item.user_id is not None else "-",
                    printable(item.user_agent, 60),
                ]
            ).rstrip()
        )
    return lines


@click.command("query", help="Login attempts matching the filters, newest first, as a table.")
@filter_options
@click.option("--limit", default="50", show_default=True, help="Rows to show (at most 1,000).")
@click.option("--cursor", help="Continue after a previous page (its printed cursor).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as the API returns it.")
def query_command(limit: str, cursor: str | None, as_json: bool, **options: Any) -> None:
    import msgspec

    from app.audit.history.attempts import fetch_page
    from app.audit.history.filters import parse_page_request
    from app.audit.history.query_log import Actor, record_query
    from app.core.errors import ValidationFailed

    settings = load_settings()
    params = {**_filter_params(options), "limit": limit, "cursor": cursor}
    try:
        request = parse_page_request(params, settings.default_phone_region)
    except ValidationFailed as exc:
        raise _usage_error(exc) from exc

    async def run(dsn: str) -> Any:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                page = await fetch_page(conn, request)
                await record_query(conn, Actor.from_shell(), "list", request.describe(), len(page.items))
            return page
        finally:
            await conn.close()

    with _database(settings) as resolved:
        page = asyncio.run(run(_dsn(resolved)))
    if as_json:
        click.echo(msgspec.json.encode(page).decode())
        return
    for text in format_table(page.items):
        click.echo(text)
    summary = f"{len(page.items)} row{'s' if len(page.items) != 1 else ''}"
    click.echo(f"{summary}; next page: --cursor {page.next_cursor}" if page.next_cursor else f"{summary}; no more.")


@click.command("export", help="Every matching attempt as CSV or NDJSON, streamed to a file or stdout.")
@filter_options
@click.option("--format", "fmt", type=click.Choice(["csv", "ndjson"]), default="csv", show_default=True)
@click.option("--output", "-o", default="-", show_default=True, help="File to write; - for stdout.")
def export_command(fmt: str, output: str, **options: Any) -> None:
    from app.audit.history.export import ExportResult, export_chunks, parse_export_request
    from app.audit.history.query_log import Actor, record_query, set_row_count
    from app.core.errors import ValidationFailed

    settings = load_settings()
    try:
        request = parse_export_request({**_filter_params(options), "format": fmt}, settings.default_phone_region)
    except ValidationFailed as exc:
        raise _usage_error(exc) from exc

    async def run(dsn: str, sink: IO[bytes]) -> ExportResult:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        result = ExportResult()

        @asynccontextmanager
        async def connection() -> AsyncIterator[Any]:
            yield conn

        async def record_row_count(conn: Any, rows: int) -> None:
            await set_row_count(conn, record_id, rows)

        try:
            record_id = await record_query(conn, Actor.from_shell(), "export", request.describe())
            chunks = export_chunks(connection, request.filters, request.format, result, finish=record_row_count)
            async for chunk in chunks:
                sink.write(chunk)
        finally:
            await conn.close()
        return result

    started = time.perf_counter()
    with _database(settings) as resolved:
        if output == "-":
            result = asyncio.run(run(_dsn(resolved), sys.stdout.buffer))
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as sink:  # noqa: PTH123
                result = asyncio.run(run(_dsn(resolved), sink))
    elapsed = time.perf_counter() - started
    where = "stdout" if output == "-" else output
    click.echo(f"exported {result.rows:,} rows to {where} in {elapsed:.1f} s", err=True)


@click.command(
    "prune",
    help="Remove attempts older than the retention period: whole monthly partitions, small batches at the boundary.",
)
@click.option(
    "--older-than",
    default=None,
    help="Age such as 365d, 36h or 52w (default: AUDIT_RETENTION_DAYS days).",
)
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--pause", type=click.FloatRange(0), default=0.0, show_default=True, help="Seconds between batches.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune_command(older_than: str | None, batch_size: int, pause: float, dry_run: bool) -> None:
    from app.audit.history.filters import iso
    from app.audit.history.prune import PruneProgress, count_older_than, parse_age, prune
    from app.audit.history.query_log import Actor, record_query, set_row_count

    settings = load_settings()
    age_text = older_than or f"{settings.audit_retention_days}d"
    try:
        age = parse_age(age_text)
    except ValueError as exc:
        raise click.UsageError(f"--older-than: {exc}") from exc
    cutoff = datetime.datetime.now(datetime.UTC) - age
    last_report = 0.0

    def report(progress: PruneProgress) -> None:
        nonlocal last_report
        if progress.elapsed - last_report >= 1.0:
            last_report = progress.elapsed
            click.echo(
                f"deleted {progress.deleted:,} rows in {progress.batches:,} batches ({progress.elapsed:.1f} s)",
                err=True,
            )

    async def run(dsn: str) -> int:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            if dry_run:
                count = await count_older_than(conn, cutoff)
                click.echo(f"{count:,} rows are older than {iso(cutoff)} (dry run: nothing deleted)")
                return count
            described = {"older_than": age_text, "cutoff": iso(cutoff), "batch_size": batch_size}
            record_id = await record_query(conn, Actor.from_shell(), "prune", described)
            done = await prune(conn, cutoff, batch_size=batch_size, pause=pause, progress=report)
            await set_row_count(conn, record_id, done.deleted)
            dropped = f"; dropped partitions {', '.join(done.dropped)}" if done.dropped else ""
            click.echo(
                f"deleted {done.deleted:,} rows older than {iso(cutoff)} "
                f"in {done.batches:,} batches ({done.elapsed:.1f} s){dropped}"
            )
            return done.deleted
        finally:
            await conn.close()

    with _database(settings) as resolved:
        asyncio.run(run(_dsn(resolved)))


AUDIT_COMMANDS = (query_command, export_command, prune_command)
