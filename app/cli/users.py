"""``ladys-essence users create-admin``: accounts for support, the security team and administrators.

The only way staff authority (:mod:`app.authority`) reaches an existing account is ``--promote``:
the panel refuses it, because the account would keep its password, PIN and sessions.

The password comes from a prompt (typed twice, not echoed) or ``--password-stdin`` (for scripts:
the first line of standard input), never from an argument that ``ps`` and shell history would keep.
It must pass the rules every account's password passes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from app.core.cli import load_settings
from app.core.settings import Settings

if TYPE_CHECKING:
    from app.accounts.promotion import AccountSummary

# support: the admin panel (Flask-era user_type admin); security: the login history, no panel; admin: both.
STAFF_ROLES = ("support", "security", "admin")


class UserCommandError(click.ClickException):
    pass


@click.group(help="Accounts: staff accounts (create-admin); support's recovery codes (recover) and unlocking (unlock).")
def users() -> None:
    pass


@users.command("create-admin", help="Create a staff account: support, security or admin (docs/authority.md).")
@click.option("--phone", required=True, help="The account's phone number (any form; stored as E.164).")
@click.option("--name", required=True, help="The person's name.")
@click.option(
    "--role",
    type=click.Choice(STAFF_ROLES),
    required=True,
    help="support: the admin panel; security: the audit API (no panel); admin: both, and who used the audit API.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option(
    "--promote",
    is_flag=True,
    help="If the phone number has an account, make it this staffer's: the role, this name and password, "
    "every session ended. Asks to confirm after showing the account.",
)
@click.option(
    "--yes-this-account-is-theirs",
    "confirmed",
    is_flag=True,
    help="With --promote: skip the question (required with --password-stdin, which cannot answer it).",
)
def create_admin(phone: str, name: str, role: str, password_stdin: bool, promote: bool, confirmed: bool) -> None:
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
        account = asyncio.run(_account(resolved, phone_number)) if promote else None
        if account is not None:
            _confirm_promotion(phone_number, account, role, confirmed=confirmed, scripted=password_stdin)
        password = _read_password(password_stdin)
        from app.credentials.passwords import password_problem

        problem = password_problem(password, phone_digits=phone_number.lstrip("+"), name=display_name)
        if problem:
            raise click.UsageError(f"password: {problem}")
        if account is not None:
            from app.accounts.promotion import LastAdminKept

            try:
                ended = asyncio.run(_promote(resolved, account, role, display_name, password))
            except LastAdminKept as exc:
                raise UserCommandError(
                    f"account {account.user_id} is the only active admin: make another account admin first"
                ) from exc
            click.echo(
                f"account {account.user_id} ({phone_number}) is now {role} with the password you typed; "
                f"{ended} session(s) ended"
            )
            return
        user_id = asyncio.run(_create(resolved, phone_number, display_name, role, password))
    click.echo(f"created {role} account {user_id} for {phone_number}")


def _confirm_promotion(
    phone_number: str, account: AccountSummary, role: str, *, confirmed: bool, scripted: bool
) -> None:
    """Show what the account is; anyone may have registered a staffer's number first."""
    last = account.last_sign_in.isoformat(timespec="seconds") if account.last_sign_in else "never"
    click.echo(
        f"{phone_number} already has account {account.user_id} "
        f"(role {account.role}, user type {account.user_type}, name {account.name!r}):\n"
        f"  created       {account.created_at.isoformat(timespec='seconds')}\n"
        f"  last sign-in  {last}\n"
        f"  live sessions {account.live_sessions}\n"
        f"Promoting it to {role} sets the password you type, turns PIN sign-in off and ends every session.",
        err=True,
    )
    if confirmed:
        return
    if scripted:
        raise UserCommandError(
            "check the account above; if it is the staffer's own, run again with --yes-this-account-is-theirs"
        )
    if not click.confirm("Is this account the staffer's own (they registered it themselves)?", default=False):
        raise UserCommandError("not promoted")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


async def _create(settings: Settings, phone_number: str, name: str, role: str, password: str) -> int:
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.authority import SUPPORT_USER_TYPE, Authority, columns_for
    from app.credentials.passwords import Hasher
    from app.db.config import sqlalchemy_config
    from app.db.models import User
    from app.events.outbox import AccountEventService

    # A new staff account starts as the panel's kind; a security analyst's is not (no panel).
    role_column, user_type = columns_for(Authority[role.upper()], SUPPORT_USER_TYPE)
    hasher = Hasher(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        password_hash = await hasher.hash_password(password)
        async with AsyncSession(engine, expire_on_commit=False) as session:
            user = User(
                name=name,
                phone_number=phone_number,
                password_hash=password_hash,
                user_type=user_type,
                role=role_column,
            )
            session.add(user)
            try:
                await session.flush()
                await AccountEventService(session=session).registered(user)  # the role is in its data
                await session.commit()
            except IntegrityError as exc:
                raise UserCommandError(
                    f"{phone_number} already has an account; anyone may have registered it. Add --promote to see it "
                    f"and, if it is the staffer's own, make it {role} with this password (its sessions end)"
                ) from exc
            return user.id
    finally:
        hasher.close()
        await engine.dispose()


async def _account(settings: Settings, phone_number: str) -> AccountSummary | None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.accounts.promotion import summarise
    from app.db.config import sqlalchemy_config

    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        async with AsyncSession(engine) as session:
            return await summarise(session, phone_number)
    finally:
        await engine.dispose()


async def _promote(settings: Settings, account: AccountSummary, role: str, name: str, password: str) -> int:
    """Give the account ``role``, ``name`` and ``password`` and end its sessions; returns how many ended."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.accounts.promotion import promote
    from app.audit.history.query_log import Actor
    from app.authority import Authority
    from app.credentials.passwords import Hasher
    from app.db.config import sqlalchemy_config

    hasher = Hasher(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    try:
        password_hash = await hasher.hash_password(password)
        async with AsyncSession(engine) as session:
            ended = await promote(
                session,
                account,
                authority=Authority[role.upper()],
                name=name,
                password_hash=password_hash,
                actor=Actor.from_shell().name,
                settings=settings,
            )
            await session.commit()
            return ended
    finally:
        hasher.close()
        await engine.dispose()


# Support's commands (app/cli/support.py): recovery codes and unlocking, as the admin panel does them.
from app.cli.support import recover, unlock  # noqa: E402

users.add_command(recover)
users.add_command(unlock)
