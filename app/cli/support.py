"""``ladys-essence users recover | unlock --phone ...``: support's tools at a shell, through the admin service.

The same service and records as the admin panel (app/admin/service.py): one ``admin_actions`` row
per command, with ``user@host`` as who did it. The operator at a shell has the highest authority
(:mod:`app.authority`), so this is where staff accounts (support, security, admin) are recovered:
the panel refuses to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from app.core.cli import load_settings
from app.core.settings import Settings

if TYPE_CHECKING:
    from app.audit.history.query_log import Actor

T = TypeVar("T")


async def _with_admin_service(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.admin.service import AdminService
    from app.core.redis import create_redis
    from app.credentials.passwords import Hasher
    from app.db.config import sqlalchemy_config
    from app.ratelimit.limiter import LoginLimiter

    hasher = Hasher(settings)
    redis = create_redis(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            service = AdminService(session, hasher, LoginLimiter(redis, settings), redis, settings)
            result = await work(service)
            await session.commit()
            return result
    finally:
        hasher.close()
        await redis.aclose()
        await engine.dispose()


def _run(work: Callable[..., Awaitable[T]]) -> T:
    from app.admin.service import AdminRefusal
    from app.core.embedded import servers_for

    settings = load_settings()
    with servers_for(settings) as resolved:
        try:
            return asyncio.run(_with_admin_service(resolved, work))
        except AdminRefusal as exc:
            raise click.ClickException(exc.message) from exc


def _shell_actor() -> Actor:
    from app.audit.history.query_log import Actor

    return Actor.from_shell()


@click.command("recover", help="Issue a one-time temporary password (ends every session, lifts the locks).")
@click.option("--phone", required=True, help="The account's phone number (any form).")
def recover(phone: str) -> None:
    from app.admin.service import AdminService, Recovery

    async def work(service: AdminService) -> tuple[str, Recovery]:
        user = await service.get_by_phone(phone)
        return user.phone_number or phone, await service.issue_recovery(_shell_actor(), user.id)

    number, recovery = _run(work)
    click.echo(f"one-time code for {number}: {recovery.code}")
    click.echo(f"valid for one sign-in (as the password) until {recovery.expires_at:%Y-%m-%d %H:%M} UTC")


@click.command("unlock", help="Lift the number's PIN lock and password budget (not a client's own budget).")
@click.option("--phone", required=True, help="The account's phone number (any form).")
def unlock(phone: str) -> None:
    from app.admin.service import AdminService

    async def work(service: AdminService) -> tuple[str, int]:
        user = await service.get_by_phone(phone)
        return user.phone_number or phone, await service.unlock(_shell_actor(), user.id)

    number, cleared = _run(work)
    click.echo(f"{number}: {cleared} lock(s) lifted" if cleared else f"{number}: nothing was locked")
