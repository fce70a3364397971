"""``ladys-essence webhooks``: endpoints that receive account events as Standard Webhooks.

``add`` prints the endpoint's signing secret once (it is stored encrypted, never shown again);
``list`` never shows it. ``deliver`` runs a deliverer as a process of its own, for deployments
that set WEBHOOKS_ENABLED=false on the API (docs/account-events.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from app.core.cli import load_settings
from app.core.settings import Settings

T = TypeVar("T")


def _with_service(action: Callable[[Any, Settings], Awaitable[T]]) -> T:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.core.embedded import servers_for
    from app.db.config import sqlalchemy_config
    from app.webhooks.service import WebhookInputError, WebhookService

    settings = load_settings()

    async def run(resolved: Settings) -> T:
        engine = sqlalchemy_config(resolved, pool=False).get_engine()
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                return await action(WebhookService(session=session), resolved)
        finally:
            await engine.dispose()

    with servers_for(settings, redis=False) as resolved:
        try:
            return asyncio.run(run(resolved))
        except WebhookInputError as exc:
            raise click.ClickException(str(exc)) from exc


def _check(check: Callable[[], T]) -> T:
    from app.webhooks.service import WebhookInputError

    try:
        return check()
    except WebhookInputError as exc:
        raise click.UsageError(str(exc)) from exc


@click.group(help="Webhooks: account events pushed to registered endpoints, signed (Standard Webhooks).")
def webhooks() -> None:
    pass


@webhooks.command(help="Register URL for the event types of --events; prints its signing secret (only this once).")
@click.argument("url")
@click.option("--events", required=True, help="Comma-separated event types (account.updated,...), or * for all.")
def add(url: str, events: str) -> None:
    from app.webhooks.service import check_url, parse_event_types

    settings = load_settings()
    checked = _check(lambda: check_url(url, production=settings.app_env == "production"))
    types = _check(lambda: parse_event_types(events))

    async def register(service: Any, resolved: Settings) -> Any:
        assert resolved.signing_keys_secret
        return await service.add(checked, types, resolved.signing_keys_secret)

    endpoint, secret = _with_service(register)
    click.echo(
        f"endpoint {endpoint.id}: {endpoint.url} ({','.join(endpoint.event_types)}); "
        "its signing secret (shown only now):",
        err=True,
    )
    click.echo(secret)


@webhooks.command("list", help="Every endpoint: id, event types, created, URL (never the secret).")
def list_endpoints() -> None:
    rows = _with_service(lambda service, _: service.endpoints())
    click.echo(f"{'id':>6}  {'created':<25}  {'events':<40}  url")
    for row in rows:
        created = row.created_at.isoformat(timespec="seconds")
        click.echo(f"{row.id:>6}  {created:<25}  {','.join(row.event_types):<40}  {row.url}")


@webhooks.command(help="Remove the endpoint ID and its deliveries (pending ones are never sent).")
@click.argument("endpoint_id", type=int)
def remove(endpoint_id: int) -> None:
    if not _with_service(lambda service, _: service.remove(endpoint_id)):
        raise click.ClickException(f"no webhook endpoint {endpoint_id}")
    click.echo(f"removed endpoint {endpoint_id}")


@webhooks.command(help="Deliver again, to one endpoint, the events it wants from --since on.")
@click.option("--endpoint", "endpoint_id", type=int, required=True, help="The endpoint's id (`webhooks list`).")
@click.option("--since", required=True, help="An ISO-8601 time (UTC unless it says), or an event id: from it on.")
@click.option("--dead-only", is_flag=True, help="Only the deliveries that were dead-lettered.")
def replay(endpoint_id: int, since: str, dead_only: bool) -> None:
    from app.webhooks.service import parse_since

    point = _check(lambda: parse_since(since))
    count = _with_service(lambda service, _: service.replay(endpoint_id, point, dead_only=dead_only))
    click.echo(f"queued {count} deliveries to endpoint {endpoint_id}")


@webhooks.command("dead-letters", help="Deliveries given up after WEBHOOKS_MAX_ATTEMPTS, newest first.")
@click.option("--endpoint", "endpoint_id", type=int, default=None, help="Only this endpoint's.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
def dead_letters(endpoint_id: int | None, limit: int) -> None:
    rows = _with_service(lambda service, _: service.dead_letters(endpoint_id, limit))
    click.echo(f"{'endpoint':>8}  {'finished':<25}  {'event':<36}  {'user':>8}  {'seq':>5}  {'tries':>5}  type / error")
    for row in rows:
        finished = row.finished_at.isoformat(timespec="seconds")
        click.echo(
            f"{row.endpoint_id:>8}  {finished:<25}  {row.event_id!s:<36}  {row.user_id:>8}  {row.seq:>5}  "
            f"{row.attempts:>5}  {row.type or '(pruned)'} / {row.last_error}"
        )


@webhooks.command(help="Deliver webhooks until SIGTERM/SIGINT; --once: what is due now, then exit.")
@click.option("--once", is_flag=True, help="Fan out pending events, make one round per endpoint, and exit.")
def deliver(once: bool) -> None:
    settings = load_settings()
    if not settings.database_url:
        raise click.ClickException("the deliverer needs DATABASE_URL (the API's database)")
    attempts = asyncio.run(_deliver(settings, once))
    if once:
        click.echo(f"made {attempts} delivery attempts")


async def _deliver(settings: Settings, once: bool) -> int:
    from app.webhooks.deliverer import WebhookDeliverer

    assert settings.database_url
    deliverer = WebhookDeliverer(settings.database_url, settings)
    if once:
        try:
            return await deliverer.run_once()
        finally:
            await deliverer.close()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, deliverer.request_stop)
    await deliverer.start()
    await deliverer.stop()
    return 0
