"""The session entity: start one, refresh it, check it on every request, list it, end it.

One definition of live (:func:`live`), used by every question asked of a session: the access-token
check, refresh, the device list, the admin view and introspection. One operation ends sessions
(:meth:`SessionService.end`), used by every path that ends one.

Locks are always taken in the same order, ``users`` row, then ``sessions`` rows, then
``refresh_tokens`` rows, so no two of these paths can deadlock. A refresh starts with one
conditional ``UPDATE`` of its session row that is also the liveness check: it either finds the
session live and holds its row until the new token is stored, or finds nothing. An ending that
commits first is seen by that ``UPDATE`` (Postgres re-reads the row it waited for); an ending that
comes second waits for the refresh and then ends the session, new token included, since a refresh
token is only ever usable while its session is live.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.db.models import RefreshToken, Session, User
from app.events.outbox import AccountEventService
from app.sessions.tokens import IssuedToken, TokenIssuer, is_opaque_refresh_token, new_refresh_token, token_digest

# Why a session ended (``sessions.end_reason``): every path that ends one names itself.
END_REASONS = (
    "logout",
    "logout_all",
    "ended",
    "ended_by_support",
    "credentials_changed",
    "recovery",
    "deactivated",
    "deleted",
    "reuse_detected",
    "role_granted",
)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def live() -> ColumnElement[bool]:
    """The one definition of a live session: not ended, not expired."""
    return and_(Session.ended_at.is_(None), Session.expires_at > func.now())


@dataclass(frozen=True, slots=True)
class Started:
    session_id: uuid.UUID
    refresh_token: str
    auth_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class SignIn:
    """What a successful sign-in or registration hands the client: the account and its new session's tokens."""

    user: User
    access: IssuedToken
    refresh_token: str


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A live session's refresh: who, for the new access token, and the rotated token if any."""

    user_id: int
    role: str
    session_id: uuid.UUID
    auth_time: datetime.datetime | None
    refresh_token: str | None
    user_type: str | None = None  # with the role, the new token's scope


@dataclass(frozen=True, slots=True)
class ClientUse:
    """Where a session was last used from (sign-in or refresh)."""

    ip_address: str | None
    user_agent: str | None


class RefreshTokenReused(InvalidToken):
    code = "refresh_token_reused"
    message = "This sign-in was used again after it was replaced. Please sign in again."


class SessionService:
    """The ``sessions`` and ``refresh_tokens`` tables, on the request's database session."""

    def __init__(self, db: AsyncSession, issuer: TokenIssuer | None, settings: Settings) -> None:
        """``issuer`` reads refresh JWTs from before opaque tokens; None where no refresh is taken (admin, CLI)."""
        self.db = db
        self.events = AccountEventService(session=db)  # the outbox, in the same transaction
        self.issuer = issuer
        self.reuse_grace = datetime.timedelta(seconds=settings.refresh_reuse_grace_seconds)
        self.refresh_lifetime = datetime.timedelta(days=settings.refresh_token_days)

    # ---- start ----------------------------------------------------------------------------------

    async def start(self, user_id: int, use: ClientUse, *, channel: str = "http") -> Started:
        """A new session signed in now, with its first refresh token (both rows in the caller's transaction)."""
        now = utcnow()
        session_id = uuid.uuid4()
        expires_at = now + self.refresh_lifetime
        await self.db.execute(
            insert(Session).values(
                id=session_id,
                user_id=user_id,
                channel=channel,
                created_at=now,
                auth_time=now,
                expires_at=expires_at,
                last_used_at=now,
                last_ip=use.ip_address,
                last_user_agent=use.user_agent,
            )
        )
        token = await self._store_refresh_token(session_id, expires_at)
        return Started(session_id, token, now)

    async def _store_refresh_token(self, session_id: uuid.UUID, expires_at: datetime.datetime) -> str:
        token = new_refresh_token()
        now = utcnow()
        await self.db.execute(
            insert(RefreshToken).values(
                jti=uuid.uuid4(),
                session_id=session_id,
                token_hash=token_digest(token),
                expires_at=expires_at,
                created_at=now,
                updated_at=now,
            )
        )
        return token

    # ---- refresh --------------------------------------------------------------------------------

    async def _token_row(self, token: str) -> RefreshToken | None:
        """The stored row of a presented refresh token (opaque, or a refresh JWT from before), if any."""
        if is_opaque_refresh_token(token):
            return await self.db.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_digest(token)))
        if self.issuer is None:
            return None
        claims = self.issuer.decode_legacy_refresh(token)
        row = await self.db.scalar(select(RefreshToken).where(RefreshToken.jti == claims.jti))
        if row is None or row.token_hash != token_digest(token) or row.session_id != claims.session_id:
            return None
        return row

    async def refresh(self, token: str, use: ClientUse, *, rotate: bool) -> Refreshed:
        """Continue a live session: InvalidToken unless the token is stored, unexpired and its session live.

        A token replaced longer ago than the grace interval ends its session (it was probably stolen);
        within it, parallel refreshes of one token all succeed (the field client refreshes in bursts).
        """
        row = await self._token_row(token)
        now = utcnow()
        if row is None or row.expires_at <= now:
            raise InvalidToken()
        if row.rotated_at is not None and now - row.rotated_at > self.reuse_grace:
            await self.end(Session.id == row.session_id, "reuse_detected")
            await self.db.commit()  # the ending must outlive the 401 that follows
            raise RefreshTokenReused()
        expires_at = now + self.refresh_lifetime
        values: dict[str, object] = {"last_used_at": now, "last_ip": use.ip_address}
        if use.user_agent is not None:
            values["last_user_agent"] = use.user_agent
        if rotate:
            values["expires_at"] = func.greatest(Session.expires_at, expires_at)
        # The liveness check and the row lock in one statement (see the module's docstring).
        found = (
            await self.db.execute(
                update(Session)
                .where(Session.id == row.session_id, live(), User.id == Session.user_id, User.is_active.is_(True))
                .values(**values)
                .returning(Session.user_id, User.role, Session.auth_time, User.user_type)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if found is None:
            raise InvalidToken()
        user_id, role, auth_time, user_type = found
        new_token = None
        if rotate:
            await self.db.execute(
                update(RefreshToken)
                .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
                .values(rotated_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            new_token = await self._store_refresh_token(row.session_id, expires_at)
        return Refreshed(user_id, role, row.session_id, auth_time, new_token, user_type)

    # ---- every request --------------------------------------------------------------------------

    async def signed_in_user(self, user_id: int, session_id: uuid.UUID) -> User | None:
        """The account of a live session, if the account is active: one statement, both checks."""
        user: User | None = await self.db.scalar(
            select(User)
            .join(Session, Session.user_id == User.id)
            .where(Session.id == session_id, User.id == user_id, live(), User.is_active.is_(True))
        )
        return user

    async def is_live(self, session_id: uuid.UUID, user_id: int | None = None) -> bool:
        which = Session.id == session_id
        if user_id is not None:
            which = and_(which, Session.user_id == user_id)
        found = await self.db.scalar(select(Session.id).where(which, live()))
        return found is not None

    async def owner_of_refresh_token(self, token: str) -> tuple[RefreshToken, Session] | None:
        """The row and live session of a refresh token the refresh endpoint would take, else None."""
        try:
            row = await self._token_row(token)
        except InvalidToken:
            return None
        now = utcnow()
        if row is None or row.expires_at <= now:
            return None
        if row.rotated_at is not None and now - row.rotated_at > self.reuse_grace:
            return None
        session = await self.db.scalar(select(Session).where(Session.id == row.session_id, live()))
        return (row, session) if session is not None else None

    # ---- the device list ------------------------------------------------------------------------

    async def live_sessions(self, user_id: int) -> list[Session]:
        """Every live session of the user, most recently used first."""
        rows = await self.db.scalars(
            select(Session).where(Session.user_id == user_id, live()).order_by(Session.last_used_at.desc())
        )
        return list(rows.all())

    # ---- ending ---------------------------------------------------------------------------------

    async def end(self, which: ColumnElement[bool], reason: str) -> list[uuid.UUID]:
        """End every live session matching ``which``: the one operation every ending goes through.

        A session row locked by a refresh in progress is waited for, then ended with the token that
        refresh stored. The rows are locked first in id order, the order a batch of rotations locks
        them in (app/sessions/direct.py), so an ending and a batch never deadlock. Returns the ids it ended.
        """
        assert reason in END_REASONS, reason
        await self.db.execute(
            select(Session.id).where(which, live()).order_by(Session.id).with_for_update(key_share=True)
        )
        ended = await self.db.scalars(
            update(Session)
            .where(which, live())
            .values(ended_at=func.now(), end_reason=reason)
            .returning(Session.id)
            .execution_options(synchronize_session=False)
        )
        return list(ended.all())

    async def end_one(self, session_id: uuid.UUID, reason: str, *, user_id: int | None = None) -> bool:
        """End one session (of ``user_id``, when given); False when there was no such live session."""
        which = Session.id == session_id
        if user_id is not None:
            which = and_(which, Session.user_id == user_id)
        return bool(await self.end(which, reason))

    async def end_all(
        self, user_id: int, reason: str, *, keep: uuid.UUID | None = None, announce: bool = True
    ) -> list[uuid.UUID]:
        """End every session of a user (but ``keep``, the one that asked).

        The user's row is locked first (the fixed order: users, then sessions), so the
        ``account.sessions_revoked`` event that follows (``announce``) bumps a row this transaction
        already holds. Callers that publish a more telling event (deactivated, deleted) pass
        ``announce=False``.
        """
        await self.db.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
        which = Session.user_id == user_id
        if keep is not None:
            which = and_(which, Session.id != keep)
        ended = await self.end(which, reason)
        if announce:
            await self.events.sessions_revoked(user_id, reason=reason)
        return ended
