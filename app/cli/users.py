"""``ladys-essence users create-admin``: accounts for the security team and administrators.

The password comes from a prompt (typed twice, not echoed) or ``--password-stdin`` (for scripts:
the first line of standard input), never from an argument that ``ps`` and shell history would keep.
It must pass the rules every account's password passes.
"""

from __future__ import annotations

import asyncio
import sys

import click

from app.core.cli import load_settings
from app.core.settings import Settings

STAFF_ROLES = ("security", "admin")


class UserCommandError(click.ClickException):
    pass


@click.group(help="Accounts: create the security team's and administrators' accounts.")
def users() -> None:
    pass


@users.command("create-admin", help="Create an account with the role security or admin.")
@click.option("--phone", required=True, help="The account's phone number (any form; stored as E.164).")
@click.option("--name", required=True, help="The person's name.")
@click.option(
    "--role", type=click.Choice(STAFF_ROLES), required=True, help="security: the audit API; admin: also who used it."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option(
    "--promote", is_flag=True, help="If the phone number has an account, give it the role (password unchanged)."
)
def create_admin(phone: str, name: str, role: str, password_stdin: bool, promote: bool) -> None:
    from app.core.phones import PhoneNumberError, normalise_phone

    settings = load_settings()
    try:
        phone_number = normalise_phone(phone, settings.default_phone_region, strict=True)
    except PhoneNumberError as exc:
        raise click.UsageError(f"--phone: {exc}") from exc
    from app.accounts.names import name_problem, normalise_name

    display_name = normalise_name(name)
    if not display_name:
        raise click.UsageError("--name: enter the person's name.")
    problem = name_problem(display_name)
    if problem:
        raise click.UsageError(f"--name: {problem}")

    from app.core.embedded import servers_for

    with servers_for(settings, redis=False) as resolved:
        if promote and asyncio.run(_promote(resolved, phone_number, role)):
            click.echo(f"{phone_number} already had an account: its role is now {role}")
            return
        password = _read_password(password_stdin)
        from app.accounts.passwords import password_problem

        problem = password_problem(password, phone_digits=phone_number.lstrip("+"), name=display_name)
        if problem:
            raise click.UsageError(f"password: {problem}")
        user_id = asyncio.run(_create(resolved, phone_number, display_name, role, password))
    click.echo(f"created {role} account {user_id} for {phone_number}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


async def _create(settings: Settings, phone_number: str, name: str, role: str, password: str) -> int:
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.accounts.passwords import Hasher
    from app.db.config import sqlalchemy_config
    from app.db.models import User

    hasher = Hasher(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        password_hash = await hasher.hash_password(password)
        async with AsyncSession(engine, expire_on_commit=False) as session:
            user = User(
                name=name,
                phone_number=phone_number,
                password_hash=password_hash,
                user_type="admin",
                role=role,
            )
            session.add(user)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise UserCommandError(
                    f"{phone_number} already has an account; add --promote to give it the role {role}"
                ) from exc
            return user.id
    finally:
        hasher.close()
        await engine.dispose()


async def _promote(settings: Settings, phone_number: str, role: str) -> bool:
    """Give an existing account ``role``; False when there is no account for the number."""
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db.config import sqlalchemy_config
    from app.db.models import User

    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        async with AsyncSession(engine) as session:
            result = await session.execute(update(User).where(User.phone_number == phone_number).values(role=role))
            await session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
