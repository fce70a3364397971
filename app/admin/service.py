"""Support staff's account management: the rules, with no HTTP types (the CLI uses them too).

Every action that changes something writes one ``admin_actions`` row and its account event in the
action's transaction, so the record, the event and the change commit or roll back together.

Who may do what to whom is :mod:`app.authority`'s decision (docs/authority.md): the panel is for
support (the Flask-era ``user_type = 'admin'``) and admins (``role = 'admin'``); nobody acts on an
account with the same or a higher authority, or on their own; staff accounts get recovery codes only
from the command line; the panel grants no staff authority to an existing account.

The last active admin (``role = 'admin'``) is never deactivated or deleted (only the operator at a
shell can try). The rule is exact under concurrency: an action that could remove an admin first
locks every active admin's row (``SELECT ... ORDER BY id FOR UPDATE``, always in the same order, so
two such actions never deadlock) and counts inside that transaction; a second action waits for the
first to commit and then sees the admin it removed as gone.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.erasure import AccountEraser
from app.accounts.service import UserService, utcnow
from app.admin.recovery import canonical_recovery_code, new_recovery_code
from app.audit.history.admin_actions import AdminActionName
from app.audit.history.query_log import Actor
from app.authority import Action, Authority, Refusal, authority_of, authority_of_user, grant_refusal, refusal
from app.core.errors import AppError, Conflict
from app.core.phones import PhoneNumberError, normalise_phone
from app.core.redis import RedisClient
from app.core.settings import Settings
from app.credentials.passwords import Hasher
from app.db.models import AdminAction, LoginAttempt, User
from app.events.outbox import AccountEventService
from app.ratelimit.limiter import LoginLimiter
from app.sessions.controller import SessionNotFound
from app.sessions.schemas import SessionView
from app.sessions.service import SessionService

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
LAST_SIGN_INS = 10
INT64_MAX = 2**63 - 1
MIN_PHONE_DIGITS = 3  # fewer typed digits match too much to be a phone search


class AdminRefusal(AppError):
    """The Flask-era admin routes answered ``{"message", "error"}``: the panel reads either."""

    def body(self) -> dict[str, Any]:
        body = super().body()
        body.setdefault("error", self.message)
        return body


class AccountNotFound(AdminRefusal):
    status_code = 404
    code = "user_not_found"
    message = "User not found."


class LastAdmin(AdminRefusal):
    status_code = 409
    code = "last_admin"
    message = "This is the last active admin account. Make another account an admin first."


class InactiveAccount(AdminRefusal):
    status_code = 409
    code = "account_inactive"
    message = "This account is deactivated. Activate it first."


class Refused(AdminRefusal):
    """What :func:`app.authority.refusal` answered, in the panel's shape."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message, code=refusal.code)
        self.status_code = refusal.status


class ResetPasswordRetired(AdminRefusal):
    status_code = 409
    code = "reset_password_retired"

    def __init__(self, ttl_hours: int) -> None:
        # The panel has no user page and no recovery button (docs/web-client.md): name what exists.
        super().__init__(
            "Passwords are no longer reset to a known value. Instead, support issues a one-time code from a "
            "service host: ladys-essence users recover --phone <the user's number> (or POST "
            "/api/admin/users/{id}/recovery), and reads the code to the user. It works for one sign-in, as "
            f"their password, within {ttl_hours} hours; right after it they set a new password and PIN in "
            "their settings. See the support runbook (docs/support.md)."
        )


def _active_admin_condition() -> ColumnElement[bool]:
    """The accounts the last-admin rule counts: role admin, active, not deleted (support and security do not)."""
    return (User.role == "admin") & User.is_active & User.deleted_at.is_(None)


# ---- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserQuery:
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    user_type: str | None = None
    is_active: bool | None = None
    search: str | None = None


@dataclass(frozen=True, slots=True)
class UserPage:
    users: Sequence[User]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.per_page) if self.total else 0


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_condition(search: str, region: str) -> ColumnElement[bool]:
    """Name or email containing the text (any case); the phone number in any form a person types it.

    A whole number in any form (``0788 123 456``, ``+250788123456``, ``250-788-123456``) is
    normalised as at sign-in and matched exactly; typed digits (three or more, spaces and
    punctuation ignored) match any number containing them, and a leading 0 (the national trunk
    prefix) stands for the region's country code.
    """
    text = search.strip()
    pattern = _like_pattern(text)
    conditions: list[ColumnElement[bool]] = [User.name.ilike(pattern), User.email.ilike(pattern)]
    with contextlib.suppress(PhoneNumberError):
        conditions.append(User.phone_number == normalise_phone(text, region, strict=False))
    digits = re.sub(r"\D", "", text)
    if len(digits) >= MIN_PHONE_DIGITS and len(digits) == len(re.sub(r"[\s()+./-]", "", text)):
        conditions.append(User.phone_number.contains(digits, autoescape=True))
        if digits.startswith("0"):
            country = phonenumbers.country_code_for_region(region)
            conditions.append(User.phone_number.startswith(f"+{country}{digits[1:]}", autoescape=True))
    return or_(*conditions)


# ---- the service --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    code: str
    expires_at: datetime.datetime


class AdminService:
    def __init__(
        self,
        session: AsyncSession,
        hasher: Hasher,
        limiter: LoginLimiter,
        redis_client: RedisClient,
        settings: Settings,
    ) -> None:
        self.session = session
        self.users = UserService(session=session)
        self.sessions = SessionService(session, None, settings)
        self.events = AccountEventService(session=session)
        self.hasher = hasher
        self.limiter = limiter
        self.redis = redis_client
        self.settings = settings

    async def record(self, actor: Actor, action: AdminActionName, target_user_id: int | None, **details: Any) -> None:
        self.session.add(
            AdminAction(
                actor_user_id=actor.user_id,
                actor=actor.name[:255],
                origin=actor.origin,
                action=action,
                target_user_id=target_user_id,
                details=details,
                client_ip=actor.client_ip,
            )
        )
        await self.session.flush()

    # ---- reading ----------------------------------------------------------------------------------

    async def list_users(self, query: UserQuery) -> UserPage:
        conditions: list[ColumnElement[bool]] = [User.deleted_at.is_(None)]
        if query.user_type is not None:
            conditions.append(User.user_type == query.user_type)
        if query.is_active is not None:
            conditions.append(User.is_active.is_(query.is_active))
        if query.search:
            conditions.append(search_condition(query.search, self.settings.default_phone_region))
        total = await self.session.scalar(select(func.count()).select_from(User).where(*conditions)) or 0
        rows = await self.session.scalars(
            select(User)
            .where(*conditions)
            .order_by(User.created_at.desc(), User.id.desc())
            .offset((query.page - 1) * query.per_page)
            .limit(query.per_page)
        )
        return UserPage(list(rows.all()), total, query.page, query.per_page)

    async def get_user(self, user_id: int, *, lock: bool = False) -> User:
        if not 0 < user_id <= INT64_MAX:  # a path's integer may be any size; ids are BIGINT
            raise AccountNotFound()
        statement = select(User).where(User.id == user_id, User.deleted_at.is_(None))
        if lock:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        user = await self.session.scalar(statement)
        if user is None:
            raise AccountNotFound()
        return user

    async def get_by_phone(self, raw_phone: str) -> User:
        try:
            phone = normalise_phone(raw_phone, self.settings.default_phone_region, strict=False)
        except PhoneNumberError as exc:
            raise AccountNotFound(str(exc)) from exc
        user = await self.session.scalar(select(User).where(User.phone_number == phone, User.deleted_at.is_(None)))
        if user is None:
            raise AccountNotFound(f"No account has the phone number {phone}.")
        return user

    async def last_sign_ins(self, user: User, limit: int = LAST_SIGN_INS) -> Sequence[LoginAttempt]:
        """The account's latest attempts under its current number, through the (phone, created_at, id) index
        (there is no index by user id: a scan of the partitioned history would be far too slow)."""
        if user.phone_number is None:
            return []
        rows = await self.session.scalars(
            select(LoginAttempt)
            .where(LoginAttempt.phone_number == user.phone_number, LoginAttempt.user_id == user.id)
            .order_by(LoginAttempt.created_at.desc(), LoginAttempt.id.desc())
            .limit(limit)
        )
        return rows.all()

    # ---- changes ----------------------------------------------------------------------------------

    async def actor_authority(self, actor: Actor) -> Authority:
        """The actor's authority as the database has it now (a role change counts at once)."""
        if actor.user_id is None:
            return Authority.OPERATOR if actor.origin == "cli" else Authority.USER
        row = (
            await self.session.execute(
                select(User.role, User.user_type).where(
                    User.id == actor.user_id, User.is_active, User.deleted_at.is_(None)
                )
            )
        ).first()
        return authority_of(row.role, row.user_type) if row is not None else Authority.USER

    async def create_user(
        self,
        actor: Actor,
        *,
        name: str,
        phone_number: str,
        password: str,
        user_type: str,
        email: str | None,
        is_active: bool,
    ) -> User:
        refused = grant_refusal(
            await self.actor_authority(actor), authority_of("user", user_type), existing_account=False
        )
        if refused is not None:
            raise Refused(refused)
        if await self.session.scalar(select(User.id).where(User.phone_number == phone_number)) is not None:
            raise Conflict("An account with this phone number already exists.", code="phone_number_taken")
        if email and await self.session.scalar(select(User.id).where(func.lower(User.email) == email.lower())):
            raise Conflict("An account with this email address already exists.", code="email_taken")
        user = User(
            name=name,
            phone_number=phone_number,
            email=email,
            password_hash=await self.hasher.hash_password(password),
            user_type=user_type,
            is_active=is_active,
        )
        try:
            user = await self.users.create(user, auto_commit=False)
        except IntegrityError as exc:
            raise Conflict("An account with this phone number or email address already exists.") from exc
        await self.events.registered(user)
        await self.record(actor, "create", user.id, user_type=user_type, is_active=is_active)
        return user

    async def _lock_admins(self) -> list[int]:
        """Lock every active admin's row, in id order; their ids."""
        rows = await self.session.scalars(
            select(User.id).where(_active_admin_condition()).order_by(User.id).with_for_update()
        )
        return list(rows.all())

    async def _target(self, actor: Actor, user_id: int, action: Action) -> User:
        """The target, locked, if :mod:`app.authority` lets the actor do ``action`` to it.

        An action that can remove an admin locks the admins' rows first (always before the target's,
        so two such actions never deadlock) and refuses to remove the last one.
        """
        removes = action in (Action.DEACTIVATE, Action.DELETE)
        admins = await self._lock_admins() if removes else []
        target = await self.get_user(user_id, lock=True)
        refused = refusal(
            await self.actor_authority(actor), actor.user_id, authority_of_user(target), target.id, action
        )
        if refused is not None:
            raise Refused(refused)
        if removes and target.id in admins and len(admins) == 1:
            raise LastAdmin()
        return target

    async def _end_every_session(self, user: User, reason: str, *, announce: bool = False) -> None:
        """Through the one ending operation; ``announce``: publish ``account.sessions_revoked`` too."""
        await self.sessions.end_all(user.id, reason, announce=announce)

    async def toggle_status(self, actor: Actor, user_id: int) -> User:
        target = await self.get_user(user_id)
        if target.is_active:
            target = await self._target(actor, user_id, Action.DEACTIVATE)
            await self.users.set_columns(target, {"is_active": False})
            await self._end_every_session(target, "deactivated")
            await self.events.deactivated(target.id, reason="admin")
            await self.record(actor, "deactivate", target.id)
        else:
            target = await self._target(actor, user_id, Action.ACTIVATE)
            await self.users.set_columns(target, {"is_active": True})
            await self.record(actor, "activate", target.id)
        return target

    async def change_user_type(self, actor: Actor, user_id: int, user_type: str) -> User:
        """The Flask-era user type; never a grant of staff authority (``create-admin --promote`` does that)."""
        target = await self._target(actor, user_id, Action.CHANGE_USER_TYPE)
        before, after = authority_of_user(target), authority_of(target.role, user_type)
        if after > before:
            refused = grant_refusal(await self.actor_authority(actor), after, existing_account=True)
            if refused is not None:
                raise Refused(refused)
        previous = target.user_type
        if previous != user_type:
            await self.events.profile_changing(target, {"user_type": user_type})
            await self.users.set_columns(target, {"user_type": user_type})
        await self.record(actor, "change_role", target.id, user_type=user_type, previous_user_type=previous)
        return target

    async def delete_user(self, actor: Actor, user_id: int) -> None:
        """Deactivate and erase the personal data (app/accounts/erasure.py); the login history stays until
        AUDIT_RETENTION_DAYS."""
        target = await self._target(actor, user_id, Action.DELETE)
        await self._end_every_session(target, "deleted")
        await self.events.deleted(target.id, reason="admin")
        await AccountEraser(self.session, self.redis, self.limiter.keys).erase(target)
        await self.record(actor, "delete", target.id)

    async def record_reset_refused(self, actor: Actor, user_id: int) -> None:
        """The old button was pressed: recorded (and committed: the caller answers 409), nothing changed."""
        target = await self.get_user(user_id)
        await self.record(actor, "reset_password_refused", target.id)
        await self.session.commit()

    async def issue_recovery(self, actor: Actor, user_id: int) -> Recovery:
        """A one-time temporary password; every session ends and the number's locks are lifted."""
        target = await self._target(actor, user_id, Action.RECOVER)
        if not target.is_active:
            raise InactiveAccount()
        code = new_recovery_code()
        expires_at = utcnow() + datetime.timedelta(hours=self.settings.recovery_ttl_hours)
        code_hash = self.hasher.digest_code(canonical_recovery_code(code))
        await self.users.set_columns(target, {"recovery_hash": code_hash, "recovery_expires_at": expires_at})
        await self.events.record(target.id, "account.credentials_changed", credentials=["recovery_code"])
        await self._end_every_session(target, "recovery", announce=True)
        cleared = await self.clear_locks(target.phone_number)
        await self.record(actor, "recovery", target.id, expires_at=expires_at.isoformat(), locks_cleared=cleared)
        return Recovery(code, expires_at)

    async def clear_locks(self, phone_number: str | None) -> int:
        """Delete the number's PIN lock and password budget (both in the number's shard); how many existed."""
        if phone_number is None:  # a Flask-era account without a number: nothing can lock it
            return 0
        keys = [self.limiter.budget_key("pin", phone_number), self.limiter.budget_key("password", phone_number)]
        deleted: int = await self.redis.delete(*keys)
        return deleted

    async def unlock(self, actor: Actor, user_id: int) -> int:
        target = await self._target(actor, user_id, Action.UNLOCK)
        cleared = await self.clear_locks(target.phone_number)
        await self.record(actor, "unlock", target.id, locks_cleared=cleared)
        return cleared

    async def live_sessions(self, user_id: int) -> list[SessionView]:
        return [SessionView.of(session) for session in await self.sessions.live_sessions(user_id)]

    async def end_session(self, actor: Actor, user_id: int, session_id: uuid.UUID) -> None:
        target = await self._target(actor, user_id, Action.END_SESSION)
        if not await self.sessions.end_one(session_id, "ended_by_support", user_id=target.id):
            raise SessionNotFound()
        await self.record(actor, "end_session", target.id, session_id=str(session_id))
