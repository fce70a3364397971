"""Password and PIN rules, and hashing off the event loop.

New hashes are argon2id (OWASP parameters by default). Flask-era bcrypt hashes verify and are
reported as needing a rehash. PINs are peppered with HMAC-SHA256 under a server secret kept outside
the database, so a stolen table alone cannot be brute-forced over the 10,000 possible PINs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.core.settings import Settings
from app.credentials.verification import HashQueue, Kind, VerifierCosts, bcrypt_cost

T = TypeVar("T")

# The password_hash of an account that has no password yet (registered over USSD with a PIN only).
# Not a hash any scheme produces, so nothing can match it; verifying against it spends the dummy
# hash's cost, so a password sign-in fails exactly like a wrong password.
NO_PASSWORD = "!no-password"  # noqa: S105 (a marker, not a secret)

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128

# DataGenetics' most common 4-digit PINs and keypad patterns, beyond the repeated digits and runs
# that are_weak_pin() refuses by construction.
COMMON_PINS = frozenset(
    {
        "1212", "1004", "2000", "6969", "1122", "1313", "2001", "1010", "2580", "0852",
        "1357", "1998", "1999", "2002", "2020", "2468", "1470", "0741", "3690",
        "0963", "7410", "1478", "5683", "0007", "0070", "4545", "1369", "2121", "6666",
    }
)  # fmt: skip


@cache
def common_passwords() -> frozenset[str]:
    """The zxcvbn package's 30,000 most common passwords, lower-cased."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.lower() for word in FREQUENCY_LISTS["passwords"])


def password_problem(password: str, *, phone_digits: str = "", name: str = "") -> str | None:
    """Why a new password is refused, in words for the person choosing it; None when it is fine."""
    if len(password) < PASSWORD_MIN_LENGTH:
        return f"Password must be at least {PASSWORD_MIN_LENGTH} characters."
    if len(password) > PASSWORD_MAX_LENGTH:
        return f"Password must be at most {PASSWORD_MAX_LENGTH} characters."
    if "\x00" in password:
        return "Password contains a character that is not allowed."
    lowered = password.lower()
    if lowered in common_passwords():
        return "This password is too common. Choose one that is harder to guess."
    national = phone_digits[-9:]
    if national and (national in re.sub(r"\D", "", password)):
        return "Password must not contain your phone number."
    letters = re.sub(r"[^a-z]", "", lowered)
    name_parts = {part for part in re.split(r"\W+", name.lower()) if len(part) >= 3}
    if letters and (letters in name_parts or letters == re.sub(r"[^a-z]", "", name.lower())):
        return "Password must not be built from your name."
    return None


def pin_problem(pin: str) -> str | None:
    """Why a new PIN is refused; None when it is fine."""
    if not re.fullmatch(r"[0-9]{4}", pin):
        return "PIN must be exactly 4 digits."
    if len(set(pin)) == 1:
        return "PIN must not repeat one digit."
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if steps in ({1}, {-1}, {1, -9}, {-1, 9}):
        return "PIN must not be a run of digits such as 1234 or 4321."
    if pin in COMMON_PINS:
        return "This PIN is too common. Choose one that is harder to guess."
    return None


def _lower_priority(nice: int) -> None:
    """Run this hashing thread at a lower priority than the event loop, so that during a login
    storm /health, refusals and token refreshes still get the CPU they need (Linux threads have
    their own nice value; elsewhere this is a no-op)."""
    with contextlib.suppress(AttributeError, OSError, PermissionError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


CODE_DIGEST_PREFIX = "hmac-sha256$"


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    needs_rehash: bool = False


class Hasher:
    """Hashes and verifies secrets in a bounded thread pool (argon2 releases the GIL)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.pin_pepper, "settings are validated before the app is built"
        self._pepper = settings.pin_pepper.encode()
        self._argon2 = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            settings.hash_thread_count,
            thread_name_prefix="hash",
            initializer=_lower_priority,
            initargs=(settings.hash_thread_nice,),
        )
        # Unknown phone numbers and disabled PINs verify against these, so they cost the same.
        started = time.perf_counter()
        self._dummy_hash = self._argon2.hash(secrets.token_hex(16))
        seeds: dict[Kind, float] = {"argon2": time.perf_counter() - started}
        if settings.legacy_bcrypt_rounds:
            seeds["bcrypt"] = bcrypt_cost(settings.legacy_bcrypt_rounds)
        self.queue = HashQueue(
            self._pool, settings.hash_thread_count, settings.rate_limit_reservation_seconds, VerifierCosts(seeds)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _pepper_pin(self, pin: str) -> str:
        return hmac.new(self._pepper, pin.encode(), hashlib.sha256).hexdigest()

    def _hash(self, secret: str) -> str:
        return self._argon2.hash(secret)

    def _verify(self, stored: str | None, candidate: str, legacy_candidate: str | None = None) -> Verification:
        if stored is None or stored == NO_PASSWORD:
            self._verify_argon2(self._dummy_hash, candidate)
            return Verification(ok=False)
        if stored.startswith(("$2a$", "$2b$", "$2y$")):
            raw = (legacy_candidate if legacy_candidate is not None else candidate).encode()
            try:
                ok = bcrypt.checkpw(raw[:72], stored.encode())
            except ValueError:
                ok = False
            return Verification(ok=ok, needs_rehash=ok)
        ok = self._verify_argon2(stored, candidate)
        return Verification(ok=ok, needs_rehash=ok and self._argon2.check_needs_rehash(stored))

    def _verify_argon2(self, stored: str, candidate: str) -> bool:
        try:
            return self._argon2.verify(stored, candidate)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def digest_code(self, code: str) -> str:
        """A random one-time code as stored: HMAC-SHA256 under the pepper (kept outside the database).

        Codes are random and short-lived, so a keyed digest is enough at rest, and checking one costs
        the same microseconds whether or not a code is outstanding (no timing tells that one is).
        """
        return CODE_DIGEST_PREFIX + hmac.new(self._pepper, b"code:" + code.encode(), hashlib.sha256).hexdigest()

    def code_matches(self, stored: str, code: str) -> bool:
        """Constant-time comparison of a typed code with its stored digest."""
        return hmac.compare_digest(stored.encode(), self.digest_code(code).encode())

    async def hash_password(self, password: str) -> str:
        return await self._run(self._hash, password)

    async def hash_pin(self, pin: str) -> str:
        return await self._run(self._hash, self._pepper_pin(pin))

    async def verify_password(self, stored: str | None, password: str, deadline_ms: int | None = None) -> Verification:
        """``stored=None`` (unknown account) or :data:`NO_PASSWORD` costs one verification (:meth:`_verify_queued`)."""
        return await self._verify_queued(deadline_ms, stored, password)

    async def verify_pin(self, stored: str | None, pin: str, deadline_ms: int | None = None) -> Verification:
        # Flask-era PIN hashes are bcrypt of the bare PIN; new ones are argon2id of the peppered PIN.
        return await self._verify_queued(deadline_ms, stored, self._pepper_pin(pin), pin)

    async def _verify_queued(
        self, deadline_ms: int | None, stored: str | None, candidate: str, legacy: str | None = None
    ) -> Verification:
        """Through the hash queue (refused with VerificationBusy past ``deadline_ms``); a failure lasts
        as long as the slowest verifier, whatever hash the account has."""
        kind: Kind = "bcrypt" if stored is not None and stored.startswith(("$2a$", "$2b$", "$2y$")) else "argon2"
        result, spent = await self.queue.verify(kind, self._verify, stored, candidate, legacy, deadline_ms=deadline_ms)
        if not result.ok:
            await self.queue.pad_failure(spent)
        return result
