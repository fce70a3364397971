"""Account and session rules: registration, sign-in, refresh, sign-out, profile changes.

No HTTP types here: the controller hands in checked values and gets results or domain errors.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Literal

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.exc import IntegrityError

from app.accounts.events import AccountEventService
from app.accounts.forms import Credentials, NewAccount, ProfileChanges
from app.accounts.passwords import Hasher, Verification
from app.accounts.tokens import IssuedToken, TokenClaims, TokenIssuer, token_digest
from app.core.errors import Conflict, FieldError, InvalidCredentials, InvalidToken, ValidationFailed
from app.core.http import user_agent_of
from app.core.settings import Settings
from app.db.models import RefreshToken, User

RefreshForm = Literal["header", "body"]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


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


class RefreshTokenService(SQLAlchemyAsyncRepositoryService[RefreshToken]):
    """The ``refresh_tokens`` table: one row per issued refresh token, a family per session."""

    class Repo(SQLAlchemyAsyncRepository[RefreshToken]):
        model_type = RefreshToken

    repository_type = Repo

    async def store(self, issued: IssuedToken, user_agent: str | None) -> RefreshToken:
        claims = issued.claims
        row = RefreshToken(
            jti=claims.jti,
            family_id=claims.session_id,
            user_id=claims.user_id,
            token_hash=token_digest(issued.token),
            expires_at=claims.expires_at,
            user_agent=user_agent_of(user_agent),
        )
        return await self.create(row, auto_commit=False)

    async def live_row(self, token: str, claims: TokenClaims) -> RefreshToken | None:
        """The row of a presented refresh token, unless it is unknown, forged or revoked."""
        row = await self.get_one_or_none(RefreshToken.jti == claims.jti)
        if row is None or row.token_hash != token_digest(token) or row.revoked_at is not None:
            return None
        return row

    async def rotate(self, row: RefreshToken, now: datetime.datetime) -> bool:
        """Mark ``row`` rotated; False when another request rotated it first (then ``row`` is reloaded)."""
        first = await self.repository.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
            .values(rotated_at=now)
            .returning(RefreshToken.id)
        )
        if first.scalar_one_or_none() is not None:
            return True
        await self.repository.session.refresh(row)
        return False

    async def revoke_family(self, family_id: uuid.UUID, reason: str) -> None:
        """End one session: every token of the family."""
        await self._revoke(RefreshToken.family_id == family_id, reason)

    async def revoke_all(self, user_id: int, reason: str, *, keep_family: uuid.UUID | None = None) -> None:
        """End every session of a user (but ``keep_family``, the one that asked)."""
        which = RefreshToken.user_id == user_id
        if keep_family is not None:
            which = which & (RefreshToken.family_id != keep_family)
        await self._revoke(which, reason)

    async def _revoke(self, which: ColumnElement[bool], reason: str) -> None:
        await self.repository.session.execute(
            update(RefreshToken)
            .where(which, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )

    async def is_live(self, family_id: uuid.UUID) -> bool:
        """True while the session has a refresh token neither revoked nor expired.

        One indexed EXISTS, as the revocation check was: a made-up ``sid`` (a token minted with a
        leaked key) has no row at all, so asking for a live row refuses it as well as a revoked one.
        """
        live = await self.repository.session.scalar(
            select(
                exists().where(
                    RefreshToken.family_id == family_id,
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > utcnow(),
                )
            )
        )
        return bool(live)


@dataclass(frozen=True, slots=True)
class Session:
    """What a successful sign-in, registration or body-form refresh hands the client."""

    user: User
    access: IssuedToken
    refresh: IssuedToken | None


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
        tokens: RefreshTokenService,
        hasher: Hasher,
        issuer: TokenIssuer,
        settings: Settings,
    ) -> None:
        self.users = users
        self.tokens = tokens
        self.hasher = hasher
        self.issuer = issuer
        self.settings = settings
        self.events = AccountEventService(session=users.repository.session)  # the outbox, in the same transaction

    async def _release_connection(self) -> None:
        """End the transaction so the pooled connection goes back before a slow hash."""
        await self.users.repository.session.commit()

    # ---- accounts -----------------------------------------------------------------------------

    async def register(self, account: NewAccount, user_agent: str | None) -> Session:
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
        return await self.start_session(user, user_agent)

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
            if (
                not result.ok
                and user is not None
                and await self.signs_in_with_recovery_code(user, credentials.secret, deadline_ms)
            ):
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
        await self.users.set_columns(user, changes)
        return user

    async def signs_in_with_recovery_code(self, user: User, secret: str, deadline_ms: int | None = None) -> bool:
        """Support's one-time temporary password (app/admin/recovery.py), typed as the password.

        Good for one sign-in before ``recovery_expires_at``: the row is cleared in the sign-in's
        transaction, and a concurrent sign-in with the same code waits for that row lock and then
        finds nothing to clear. Only accounts with a live code pay for the second verification.
        """
        if user.recovery_hash is None or user.recovery_expires_at is None or user.recovery_expires_at <= utcnow():
            return False
        candidate = canonical_recovery_code(secret)
        if not (await self.hasher.verify_password(user.recovery_hash, candidate, deadline_ms)).ok:
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

    async def start_session(self, user: User, user_agent: str | None) -> Session:
        """A new session, signed in now (its tokens' ``auth_time``)."""
        family = uuid.uuid4()
        now = utcnow()
        access = self.issuer.issue("access", user_id=user.id, role=user.role, session_id=family, auth_time=now)
        refresh = await self._store_refresh(user, family, user_agent, now)
        return Session(user=user, access=access, refresh=refresh)

    async def _store_refresh(
        self, user: User, family: uuid.UUID, user_agent: str | None, auth_time: datetime.datetime | None
    ) -> IssuedToken:
        refresh = self.issuer.issue("refresh", user_id=user.id, role=user.role, session_id=family, auth_time=auth_time)
        await self.tokens.store(refresh, user_agent)
        return refresh

    # ---- refresh ------------------------------------------------------------------------------

    def _rotates(self, form: RefreshForm) -> bool:
        mode = self.settings.refresh_rotation
        return mode == "always" or (mode == "auto" and form == "body")

    async def refresh(self, token: str, form: RefreshForm, user_agent: str | None) -> Session:
        claims = self.issuer.decode(token, "refresh")
        row = await self.tokens.live_row(token, claims)
        if row is None:
            raise InvalidToken()
        user = await self._active_user(claims.user_id)
        now = utcnow()
        await self._refuse_reuse(row, now)
        # A refresh is no sign-in: the tokens keep the session's auth_time.
        signed_in = claims.auth_time
        if not self._rotates(form):
            access = self.issuer.issue(
                "access", user_id=user.id, role=user.role, session_id=row.family_id, auth_time=signed_in
            )
            return Session(user=user, access=access, refresh=None)

        if not await self.tokens.rotate(row, now):
            # Another request rotated it meanwhile: fine inside the grace interval (parallel refreshes).
            await self._refuse_reuse(row, now)
        access = self.issuer.issue(
            "access", user_id=user.id, role=user.role, session_id=row.family_id, auth_time=signed_in
        )
        refresh = await self._store_refresh(user, row.family_id, user_agent, signed_in)
        return Session(user=user, access=access, refresh=refresh)

    async def _refuse_reuse(self, row: RefreshToken, now: datetime.datetime) -> None:
        """A rotated token that comes back after the grace interval was probably stolen: end the session."""
        grace = datetime.timedelta(seconds=self.settings.refresh_reuse_grace_seconds)
        if row.rotated_at is None or now - row.rotated_at <= grace:
            return
        await self.tokens.revoke_family(row.family_id, reason="reuse_detected")
        await self.tokens.repository.session.commit()  # the revocation must outlive the 401 that follows
        raise InvalidToken(
            "This sign-in was used again after it was replaced. Please sign in again.",
            code="refresh_token_reused",
        )

    async def _active_user(self, user_id: int) -> User:
        user = await self.users.get_one_or_none(User.id == user_id)
        if user is None or not user.is_active:
            raise InvalidToken()
        return user

    # ---- sessions -----------------------------------------------------------------------------

    async def logout(self, claims: TokenClaims) -> None:
        await self.tokens.revoke_family(claims.session_id, reason="logout")

    async def user_for_access_token(self, claims: TokenClaims) -> User:
        """The signed-in user, provided the account is active and the session exists and is live."""
        if not await self.tokens.is_live(claims.session_id):
            raise InvalidToken()
        return await self._active_user(claims.user_id)

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
        await self.tokens.revoke_all(user.id, reason="credentials_changed", keep_family=current_session)
        await self.events.sessions_revoked(user.id, reason="credentials_changed")
        return True

    # ---- deactivation -------------------------------------------------------------------------

    async def deactivate(self, user: User, reason: str) -> None:
        """No more sign-ins or refreshes, every session ended; the caller's transaction commits it."""
        if not user.is_active:
            return
        await self.users.set_columns(user, {"is_active": False})
        await self.tokens.revoke_all(user.id, reason="deactivated")
        await self.events.deactivated(user.id, reason)
