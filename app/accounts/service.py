"""Account rules: registration, sign-in, profile changes, deactivation (sessions are app/sessions).

No HTTP types here: the controller hands in checked values and gets results or domain errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError

from app.accounts.forms import Credentials, NewAccount, ProfileChanges
from app.core.errors import Conflict, FieldError, InvalidCredentials, ValidationFailed
from app.core.settings import Settings
from app.credentials.passwords import Hasher, Verification
from app.db.models import User
from app.events.outbox import AccountEventService
from app.sessions.service import ClientUse, SessionService, SignIn, utcnow
from app.sessions.tokens import TokenIssuer

__all__ = ["AuthService", "LoginFailed", "SignIn", "UserService", "canonical_recovery_code", "utcnow"]


def canonical_recovery_code(typed: str) -> str:
    """A recovery code as hashed and compared: upper case, without the dash or spaces people add."""
    return "".join(ch for ch in typed.upper() if ch.isalnum())


class UserService(SQLAlchemyAsyncRepositoryService[User]):
    class Repo(SQLAlchemyAsyncRepository[User]):
        model_type = User

    repository_type = Repo

    async def get_by_phone(self, phone_number: str) -> User | None:
        return await self.get_one_or_none(User.phone_number == phone_number)

    async def set_columns(self, user: User, values: dict[str, object]) -> None:
        """One UPDATE of ``values`` (no reload: the sign-in path's connection was handed back)."""
        await self.repository.session.execute(update(User).where(User.id == user.id).values(**values))
        for key, value in values.items():
            setattr(user, key, value)


@dataclass(frozen=True, slots=True)
class LoginFailure:
    """Why a sign-in failed, for the audit trail; the client only ever hears InvalidCredentials."""

    reason: str
    user_id: int | None


class LoginFailed(InvalidCredentials):
    def __init__(self, failure: LoginFailure) -> None:
        super().__init__()
        self.failure = failure


class AuthService:
    def __init__(
        self,
        users: UserService,
        sessions: SessionService,
        hasher: Hasher,
        issuer: TokenIssuer,
        settings: Settings,
        account_by_phone: Callable[[str], Awaitable[User | None]] | None = None,
    ) -> None:
        """``account_by_phone``: the sign-in's lookup, when it can be asked without the ORM session
        (app/sessions/direct.py: one round trip, no transaction); else the ORM's, connection handed back."""
        self.users = users
        self._account_by_phone = account_by_phone
        self.sessions = sessions
        self.hasher = hasher
        self.issuer = issuer
        self.settings = settings
        self.events = AccountEventService(session=users.repository.session)  # the outbox, in the same transaction

    async def _release_connection(self) -> None:
        """End the transaction so the pooled connection goes back before a slow hash."""
        await self.users.repository.session.commit()

    async def commit(self) -> None:
        """Commit now, for a caller that must know the change is stored before it answers or records."""
        await self.users.repository.session.commit()

    # ---- accounts -----------------------------------------------------------------------------

    async def register(self, account: NewAccount, use: ClientUse) -> SignIn:
        await self._ensure_unique(account.phone_number, account.email, exclude_id=None)
        password_hash = await self.hasher.hash_password(account.password)
        pin_hash = await self.hasher.hash_pin(account.pin) if account.pin else None
        user = User(
            name=account.name,
            phone_number=account.phone_number,
            email=account.email,
            password_hash=password_hash,
            user_type=account.user_type,
            pin_hash=pin_hash,
            enable_pin_auth=pin_hash is not None,
            date_of_birth=account.date_of_birth,
            last_activity=utcnow(),
        )
        try:
            user = await self.users.create(user, auto_commit=False)
        except IntegrityError as exc:  # a concurrent registration won the race
            raise Conflict("An account with this phone number already exists.", code="phone_number_taken") from exc
        await self.events.registered(user)
        return await self.start_session(user, use)

    async def _ensure_unique(self, phone: str | None, email: str | None, exclude_id: int | None) -> None:
        if phone:
            clash = await self.users.get_one_or_none(User.phone_number == phone)
            if clash and clash.id != exclude_id:
                raise Conflict("An account with this phone number already exists.", code="phone_number_taken")
        if email:
            clash = await self.users.get_one_or_none(func.lower(User.email) == email.lower())
            if clash and clash.id != exclude_id:
                raise Conflict("An account with this email address already exists.", code="email_taken")

    # ---- sign-in ------------------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials, deadline_ms: int | None = None) -> User:
        """Verify a phone number with a password or PIN; every failure costs one hash verification.

        ``deadline_ms``: when the attempt's budget reservations lapse; a verification that could not
        finish by then is refused with VerificationBusy, unverified.
        """
        if self._account_by_phone is not None:
            user = await self._account_by_phone(credentials.phone_number)
        else:
            user = await self.users.get_by_phone(credentials.phone_number)
            # Release the pooled connection before the slow hash, so a login storm cannot starve the pool.
            await self._release_connection()
        if credentials.method == "pin":
            pin_usable = user is not None and user.enable_pin_auth and user.pin_hash is not None
            stored = user.pin_hash if pin_usable and user else None
            result = await self.hasher.verify_pin(stored, credentials.secret, deadline_ms)
            if user is not None and not pin_usable:
                raise LoginFailed(LoginFailure("pin_not_enabled", user.id))
        else:
            stored = user.password_hash if user else None
            result = await self.hasher.verify_password(stored, credentials.secret, deadline_ms)
            if not result.ok and user is not None and await self.signs_in_with_recovery_code(user, credentials.secret):
                result = Verification(ok=True)
        if user is None:
            raise LoginFailed(LoginFailure("unknown_account", None))
        if not result.ok:
            raise LoginFailed(LoginFailure("invalid_credentials", user.id))
        if not user.is_active:
            raise LoginFailed(LoginFailure("account_inactive", user.id))
        changes: dict[str, object] = {"last_activity": utcnow()}
        if result.needs_rehash:
            if credentials.method == "pin":
                changes["pin_hash"] = await self.hasher.hash_pin(credentials.secret)
            else:
                changes["password_hash"] = await self.hasher.hash_password(credentials.secret)
        await self._confirm_unchanged(user, credentials.method, stored, changes)
        return user

    async def _confirm_unchanged(
        self, user: User, method: str, verified: str | None, changes: dict[str, object]
    ) -> None:
        """Record the sign-in only if the account is still what was verified, and hold its row until commit.

        The hash was checked with no lock held (a slow step, the connection handed back). Meanwhile a
        password or phone number change, a promotion, a deactivation or a deletion may have committed
        and ended every session: a sign-in verified against the old state must not start a new one,
        nor write back a rehash of the old secret. So the update is conditional on the hash and the
        number verified, and its row lock is held until the new session commits; an ending that comes
        later waits for it, and then ends that session too (every ending locks the user's row first:
        app/sessions/service.py).
        """
        hash_column = User.pin_hash if method == "pin" else User.password_hash
        unchanged = [
            hash_column == verified,
            User.phone_number == user.phone_number,  # the number signed in with: a credential too
            User.is_active.is_(True),
            User.deleted_at.is_(None),
        ]
        if method == "pin":
            unchanged.append(User.enable_pin_auth.is_(True))
        still = await self.users.repository.session.scalar(
            update(User)
            .where(User.id == user.id, *unchanged)
            .values(**changes)
            .returning(User.id)
            .execution_options(synchronize_session=False)
        )
        if still is None:
            raise LoginFailed(LoginFailure("credentials_changed", user.id))
        for key, value in changes.items():
            setattr(user, key, value)

    async def signs_in_with_recovery_code(self, user: User, secret: str) -> bool:
        """Support's one-time temporary password (app/admin/recovery.py), typed as the password.

        Good for one sign-in before ``recovery_expires_at``: the row is cleared in the sign-in's
        transaction, and a concurrent sign-in with the same code waits for that row lock and then
        finds nothing to clear. The code is random and kept as a keyed digest
        (:meth:`Hasher.code_matches`), so checking it costs microseconds: a failed sign-in takes as
        long with a code outstanding as without one.
        """
        if user.recovery_hash is None or user.recovery_expires_at is None or user.recovery_expires_at <= utcnow():
            return False
        candidate = canonical_recovery_code(secret)
        if user.recovery_hash.startswith("$argon2"):  # issued before codes were digests: good until it expires
            if not (await self.hasher.verify_password(user.recovery_hash, candidate)).ok:
                return False
        elif not self.hasher.code_matches(user.recovery_hash, candidate):
            return False
        consumed = await self.users.repository.session.scalar(
            update(User)
            .where(User.id == user.id, User.recovery_hash == user.recovery_hash, User.recovery_expires_at > utcnow())
            .values(recovery_hash=None, recovery_expires_at=None)
            .returning(User.id)
            .execution_options(synchronize_session=False)
        )
        if consumed is None:
            return False
        user.recovery_hash = user.recovery_expires_at = None
        return True

    async def start_session(self, user: User, use: ClientUse) -> SignIn:
        """A new session, signed in now (its tokens' ``auth_time``)."""
        started = await self.sessions.start(user.id, use)
        access = self.issuer.issue_access(
            user_id=user.id,
            role=user.role,
            user_type=user.user_type,
            session_id=started.session_id,
            auth_time=started.auth_time,
        )
        return SignIn(user=user, access=access, refresh_token=started.refresh_token)

    # ---- profile ------------------------------------------------------------------------------

    async def update_profile(self, user: User, changes: ProfileChanges, current_session: uuid.UUID) -> bool:
        """Apply changes (re-authentication was confirmed: app/accounts/reauth.py).

        A password, PIN or phone change ends every other session and keeps ``current_session``;
        True when it did.
        """
        fields = dict(changes.fields)
        if fields.get("name") is None:
            fields.pop("name", None)
        await self._ensure_unique(fields.get("phone_number"), fields.get("email"), exclude_id=user.id)
        if changes.new_password:
            fields["password_hash"] = await self.hasher.hash_password(changes.new_password)
        if changes.new_pin:
            fields["pin_hash"] = await self.hasher.hash_pin(changes.new_pin)
            fields["enable_pin_auth"] = True  # whatever the checkbox sent with it said (the Flask route's order)
        if fields.get("enable_pin_auth") and not (user.pin_hash or changes.new_pin):
            raise ValidationFailed([FieldError("enable_pin_auth", "Set a PIN before turning on PIN sign-in.")])
        await self.events.profile_changing(user, fields)
        for key, value in fields.items():
            setattr(user, key, value)
        try:
            await self.users.update(user, auto_commit=False, auto_refresh=False)
        except IntegrityError as exc:
            raise Conflict("That phone number or email address belongs to another account.") from exc
        if not changes.changes_credentials:
            return False
        await self.sessions.end_all(user.id, "credentials_changed", keep=current_session)
        return True

    # ---- deactivation -------------------------------------------------------------------------

    async def deactivate(self, user: User, reason: str) -> None:
        """No more sign-ins or refreshes, every session ended; the caller's transaction commits it."""
        if not user.is_active:
            return
        await self.users.set_columns(user, {"is_active": False})
        await self.sessions.end_all(user.id, "deactivated", announce=False)
        await self.events.deactivated(user.id, reason)
