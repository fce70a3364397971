"""The USSD channel's rules: verify a PIN, register a PIN-only account, change a PIN.

No HTTP types here. Verification is the accounts service's own (:meth:`AuthService.authenticate`):
the same equal-cost answer for unknown numbers and disabled PINs, and the same rehash of a
Flask-era bcrypt PIN on success.
"""

from __future__ import annotations

import datetime

from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from sqlalchemy.exc import IntegrityError

from app.accounts.forms import Credentials
from app.accounts.service import AuthService
from app.core.errors import Conflict
from app.credentials.passwords import NO_PASSWORD
from app.db.models import User
from app.ussd.schemas import UssdAccount


class PhoneNumberTaken(Conflict):
    code = "phone_number_taken"
    message = "This phone number already has an account. Dial again and sign in with your PIN."


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class UssdService:
    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    async def verify_pin(self, phone_number: str, pin: str, deadline_ms: int | None = None) -> User:
        """The account, or :class:`~app.accounts.service.LoginFailed` (one answer for every failure).

        ``deadline_ms``: when the attempt's first reservation lapses; a verification that could not
        finish by then is refused (VerificationBusy) rather than started.
        """
        return await self.auth.authenticate(Credentials(phone_number, pin, "pin"), deadline_ms=deadline_ms)

    async def register(self, account: UssdAccount) -> User:
        """A PIN-only account; the operator vouches for the number, so it is verified.

        It has no password (:data:`~app.credentials.passwords.NO_PASSWORD`) until one is set from the
        app: a password sign-in fails meanwhile exactly like a wrong password, at the same cost.
        """
        users = self.auth.users
        if await users.get_by_phone(account.phone_number) is not None:
            raise PhoneNumberTaken()
        await users.repository.session.commit()  # hand the connection back before the slow hash
        pin_hash = await self.auth.hasher.hash_pin(account.pin)
        user = User(
            name=account.name,
            phone_number=account.phone_number,
            password_hash=NO_PASSWORD,
            user_type=account.user_type,
            pin_hash=pin_hash,
            enable_pin_auth=True,
            is_phone_verified=True,
            last_activity=utcnow(),
        )
        try:
            return await users.create(user, auto_commit=True)
        except (IntegrityError, RepositoryIntegrityError) as exc:  # a concurrent registration won the race
            raise PhoneNumberTaken() from exc

    async def change_pin(self, user: User, new_pin: str) -> None:
        """Set the new PIN and end every session of the account, as a PIN change in the app does."""
        pin_hash = await self.auth.hasher.hash_pin(new_pin)
        await self.auth.users.set_columns(user, {"pin_hash": pin_hash, "enable_pin_auth": True})
        await self.auth.sessions.end_all(user.id, "credentials_changed")
        await self.auth.users.repository.session.commit()
