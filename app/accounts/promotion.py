"""Giving an existing account staff authority (``users create-admin --promote``) without handing it over.

Anyone can register a staffer's number before the staffer gets an account. Promotion therefore
shows the operator what the account is (created, last sign-in, live sessions) and, in one
transaction: sets the authority's columns (:func:`app.authority.columns_for`), the password the
operator typed (and turns PIN sign-in off, clearing the PIN), ends every session (app/sessions), writes an
``audit_queries`` entry (action ``grant_role``: the security team's record of who may read the
login history) and the account events. This is the only way staff authority reaches an existing
account (the panel refuses, :func:`app.authority.grant_refusal`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.authority import Authority, authority_of, columns_for
from app.core.settings import Settings
from app.db.models import AuditQuery, LoginAttempt, Session, User
from app.events.outbox import AccountEventService
from app.sessions.service import SessionService, live


class LastAdminKept(Exception):
    """Promoting the only active admin to a lower authority would leave no admin."""


@dataclass(frozen=True, slots=True)
class AccountSummary:
    user_id: int
    name: str
    role: str
    user_type: str
    created_at: datetime.datetime
    last_sign_in: datetime.datetime | None
    live_sessions: int


async def summarise(session: AsyncSession, phone_number: str) -> AccountSummary | None:
    user = await session.scalar(select(User).where(User.phone_number == phone_number))
    if user is None:
        return None
    last_sign_in = await session.scalar(
        select(func.max(LoginAttempt.created_at)).where(
            # The phone filter uses the (phone_number, created_at, id) index; user_id alone has none.
            LoginAttempt.phone_number == phone_number,
            LoginAttempt.user_id == user.id,
            LoginAttempt.success,
        )
    )
    live_sessions = await session.scalar(
        select(func.count()).select_from(Session).where(Session.user_id == user.id, live())
    )
    return AccountSummary(
        user.id, user.name, user.role, user.user_type, user.created_at, last_sign_in, int(live_sessions or 0)
    )


async def promote(
    session: AsyncSession,
    account: AccountSummary,
    *,
    authority: Authority,
    name: str,
    password_hash: str,
    actor: str,
    settings: Settings,
) -> int:
    """Make ``account`` the operator's: authority, name, password; every session ended. Returns sessions ended."""
    role, user_type = columns_for(authority, account.user_type)
    if account.role == "admin" and role != "admin":
        admins = await session.scalars(
            select(User.id)
            .where(User.role == "admin", User.is_active, User.deleted_at.is_(None))
            .order_by(User.id)
            .with_for_update()
        )
        if list(admins.all()) == [account.user_id]:
            raise LastAdminKept()
    await session.execute(
        update(User)
        .where(User.id == account.user_id)
        .values(
            role=role, user_type=user_type, name=name, password_hash=password_hash, pin_hash=None, enable_pin_auth=False
        )
    )
    events = AccountEventService(session=session)
    if role != account.role:
        await events.role_changed(account.user_id, role, previous_role=account.role)
    if user_type != account.user_type:
        await events.record(account.user_id, "account.updated", fields={"user_type": user_type})
    await events.record(account.user_id, "account.credentials_changed", credentials=["password", "pin"])
    ended = await SessionService(session, None, settings).end_all(account.user_id, "role_granted")
    previous = authority_of(account.role, account.user_type)
    session.add(
        AuditQuery(
            user_id=account.user_id,
            actor=actor,
            origin="cli",
            action="grant_role",
            filters={
                "user_id": account.user_id,
                "role": role,
                "previous_role": account.role,
                "authority": authority.label,
                "previous_authority": previous.label,
                "sessions_revoked": len(ended),
                "password_set": True,
            },
        )
    )
    return len(ended)
