"""``ladys-essence services``: credentials for the platform's services: create, list, revoke.

``create`` prints the token once; only its SHA-256 is kept, so a lost token is revoked and replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from app.core.cli import load_settings
from app.core.settings import Settings

T = TypeVar("T")


def _with_service(action: Callable[[Any], Awaitable[T]]) -> T:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.core.embedded import servers_for
    from app.db.config import sqlalchemy_config
    from app.platform.credentials import ServiceCredentialService

    settings = load_settings()

    async def run(resolved: Settings) -> T:
        engine = sqlalchemy_config(resolved, pool=False).get_engine()
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                return await action(ServiceCredentialService(session=session))
        finally:
            await engine.dispose()

    with servers_for(settings, redis=False) as resolved:
        return asyncio.run(run(resolved))


@click.group(help="Credentials of the platform's services (introspection, user reads).")
def services() -> None:
    pass


@services.command(help="Create a credential for the service NAME and print its token (shown only this once).")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, help="Repeat for several scopes.")
def create(name: str, scopes: tuple[str, ...]) -> None:
    from app.core.errors import Conflict
    from app.platform.credentials import NAME_PATTERN
    from app.platform.scopes import SCOPES, unknown_scopes

    if not NAME_PATTERN.match(name):
        raise click.UsageError("NAME: 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit.")
    unknown = unknown_scopes(scopes)
    if unknown:
        raise click.UsageError(f"unknown scope {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    try:
        row, token = _with_service(lambda service: service.issue(name, list(scopes)))
    except Conflict as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"created {row.name} with scopes {' '.join(row.scopes)}; its token (shown only now):", err=True)
    click.echo(token)


@services.command("list", help="Every credential: name, scopes, created, revoked.")
def list_credentials() -> None:
    rows = _with_service(lambda service: service.every_credential())
    click.echo(f"{'name':<32} {'scopes':<28} {'created':<26} revoked")
    for row in rows:
        created = row.created_at.isoformat(timespec="seconds")
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "-"
        click.echo(f"{row.name:<32} {' '.join(row.scopes):<28} {created:<26} {revoked}")


@services.command(help="Revoke the credential of NAME: its token is refused from the next request on.")
@click.argument("name")
def revoke(name: str) -> None:
    count = _with_service(lambda service: service.revoke(name))
    if not count:
        raise click.ClickException(f"no live credential named {name}")
    click.echo(f"revoked {name}")
