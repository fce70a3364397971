"""``ladys-essence keys``: the token-signing keys: rotate, list, retire.

``rotate`` publishes a new key at once; it starts signing after SIGNING_KEYS_REFRESH_SECONDS +
JWKS_MAX_AGE_SECONDS (+5 s), when every API process and every cached JWKS has it. The key it
replaces verifies until the last token it signed has expired, then leaves the JWKS by itself.
Run it with the API's settings (the same SIGNING_KEYS_SECRET and timings).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from app.core.cli import load_settings
from app.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def _run(action: Callable[[Settings, AsyncEngine], Awaitable[T]]) -> T:
    from app.core.embedded import servers_for
    from app.db.config import sqlalchemy_config

    settings = load_settings()

    async def run(resolved: Settings) -> T:
        engine = sqlalchemy_config(resolved, pool=False).get_engine()
        try:
            return await action(resolved, engine)
        finally:
            await engine.dispose()

    with servers_for(settings, redis=False) as resolved:
        return asyncio.run(run(resolved))


def _when(moment: datetime.datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


@click.group(help="Token-signing keys: rotate, list, retire.")
def keys() -> None:
    pass


@keys.command(help="Publish a new signing key; it signs once every process and cached JWKS has it.")
@click.option("--alg", type=click.Choice(["ES256", "EdDSA"]), default=None, help="Default: JWT_ALGORITHM.")
def rotate(alg: str | None) -> None:
    from app.keys.store import rotate as rotate_keys

    rotation = _run(lambda settings, engine: rotate_keys(engine, settings, alg))  # type: ignore[arg-type]
    click.echo(f"published {rotation.kid}; it signs from {_when(rotation.activates_at)}")
    for kid in rotation.retired:
        click.echo(f"retired {kid}: every token it signed has expired")


@keys.command(help="Make the first signing key if none can sign (a new deployment); otherwise change nothing.")
def ensure() -> None:
    from app.keys.store import create_first_key

    kid = _run(lambda settings, engine: create_first_key(engine, settings))
    click.echo(f"created {kid}; it signs from now" if kid else "a key that signs exists; nothing changed")


@keys.command("list", help="Every key with its state: next, active, retiring, retired.")
def list_keys() -> None:
    from app.keys.store import list_keys as read

    rows = _run(lambda settings, engine: read(engine, settings))
    click.echo(f"{'kid':<44} {'alg':<6} {'state':<9} {'signs from':<26} {'verifies until':<26}")
    for row in rows:
        until = row.retired_at or row.retire_after
        click.echo(f"{row.kid:<44} {row.alg:<6} {row.state:<9} {_when(row.activates_at):<26} {_when(until):<26}")


@keys.command(help="Stop publishing KID and destroy its private key (refused while its tokens may live).")
@click.argument("kid")
@click.option("--force", is_flag=True, help="Even if it signs now or its tokens live: for a compromised key.")
def retire(kid: str, force: bool) -> None:
    from app.keys.store import KeyChangeRefused
    from app.keys.store import retire as retire_key

    try:
        _run(lambda settings, engine: retire_key(engine, settings, kid, force=force))
    except KeyChangeRefused as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"retired {kid}: no longer published; API processes drop it within SIGNING_KEYS_REFRESH_SECONDS")
