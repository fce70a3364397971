"""What a recovery changes: new credentials, the number proven, every session ended, locks lifted.

No HTTP types here. A code (SMS or USSD) or the network's word that this number is dialling (USSD)
proves the person holds the number's SIM. That wins over whatever the account held: on an account
whose number was never verified (registered over HTTP by anyone), the credentials are replaced and
every session ends, so a squatter loses it to the number's owner (audited ``recovered_unverified``).
"""

from __future__ import annotations

import datetime

from app.accounts.schemas import split_name
from app.accounts.service import AuthService, SignIn
from app.core.redis import RedisClient
from app.db.models import User
from app.ratelimit.limiter import LoginLimiter
from app.sessions.service import ClientUse


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def answers_knowledge_check(user: User, answer: str) -> bool:
    """The year of birth when the account has one, else the first name (any case, spaces trimmed)."""
    typed = answer.strip()
    if user.date_of_birth is not None:
        return typed == str(user.date_of_birth.year)
    first_name, _ = split_name(user.name or "")
    return bool(first_name) and typed.casefold() == first_name.casefold()


def knowledge_question(user: User | None) -> str:
    """What the menu asks for: ``year_of_birth`` or ``first_name``."""
    return "year_of_birth" if user is not None and user.date_of_birth is not None else "first_name"


class RecoveryService:
    def __init__(self, auth: AuthService, redis: RedisClient, limiter: LoginLimiter) -> None:
        self.auth = auth
        self.redis = redis
        self.limiter = limiter

    async def account_for(self, phone_number: str) -> User | None:
        """The active account on the number, or None."""
        user = await self.auth.users.get_by_phone(phone_number)
        return user if user is not None and user.is_active else None

    async def complete(
        self, user: User, use: ClientUse, *, new_password: str | None = None, new_pin: str | None = None
    ) -> SignIn:
        """New credentials and a new session (signed in now: settings follow without re-entering a password)."""
        await self._replace(user, new_password=new_password, new_pin=new_pin)
        sign_in = await self.auth.start_session(user, use)
        await self.auth.commit()
        await self.clear_locks(user.phone_number)
        return sign_in

    async def reset_pin(self, user: User, new_pin: str) -> None:
        await self._replace(user, new_pin=new_pin)
        await self.auth.commit()
        await self.clear_locks(user.phone_number)

    async def _replace(self, user: User, *, new_password: str | None = None, new_pin: str | None = None) -> None:
        changes: dict[str, object] = {
            "is_phone_verified": True,
            "recovery_hash": None,
            "recovery_expires_at": None,
            "last_activity": utcnow(),
        }
        await self.auth.commit()  # hand the connection back before the slow hash
        if new_password is not None:
            changes["password_hash"] = await self.auth.hasher.hash_password(new_password)
        if new_pin is not None:
            changes["pin_hash"] = await self.auth.hasher.hash_pin(new_pin)
            changes["enable_pin_auth"] = True
        await self.auth.users.set_columns(user, changes)
        await self.auth.sessions.end_all(user.id, "recovery")

    async def clear_locks(self, phone_number: str | None) -> None:
        """The number's PIN lock and password window (as support's unlock: app/admin/service.py)."""
        if phone_number is None:
            return
        keys = [self.limiter.budget_key(budget, phone_number) for budget in ("pin", "password", "recovery_knowledge")]
        await self.redis.delete(*keys)
