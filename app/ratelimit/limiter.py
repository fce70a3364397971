"""Exact failure budgets in Redis: reserve a slot before verifying a credential, settle it after.

A budget is one sorted set per client (or phone number) holding the failures still inside its
sliding window plus the reservations of attempts in flight. ``reserve`` refuses when failures +
live reservations reach the limit, so however many workers or hosts verify concurrently, no more
guesses are verified than the budget allows. A reservation that is never settled (its request
died) lapses after ``rate_limit_reservation_seconds``. Both scripts (``reserve.lua``,
``settle.lua``, next to this file) touch keys of one hash slot only, the budget and the audit
stream of its shard (see :mod:`app.core.redis_keys`), so they run unchanged on Redis Cluster; and a
refusal or a settle records its audit event in the same round trip, unless that stream is at its
share of ``AUDIT_MAX_BACKLOG``: then the reply says the event was not appended, and the caller
stores it in Postgres (see :mod:`app.audit.pipeline.backlog`).

Budgets:
- ``login`` per client (``RATE_LIMIT_LOGIN_*``): failed logins in a sliding window;
- ``password`` per phone (``ACCOUNT_*``): failed password logins in a sliding window;
- ``pin`` per phone (``PIN_MAX_FAILURES``): consecutive PIN failures, from any client. A PIN success
  or a password success on the number clears it, and it lifts by itself after ``PIN_LOCK_SECONDS``
  (a sliding window), so strangers' wrong PINs cannot shut the owner out for long;
- ``register`` per client (``REGISTER_*``): every attempt counts (one ``hit``, no reservation);
- ``ussd_gateway`` per gateway credential (``USSD_MAX_FAILURES_PER_MINUTE``): failed PIN
  verifications over all numbers in a minute's sliding window;
- ``ussd_session`` per USSD session (``USSD_SESSION_MAX_FAILURES``): wrong PINs of one session;
- ``ussd_register`` per gateway credential (``USSD_REGISTRATIONS_PER_MINUTE``) and
  ``ussd_register_number`` per phone (``USSD_REGISTRATIONS_PER_NUMBER_PER_DAY``): USSD
  registrations, every attempt counts (a ``hit``), one answering 409 too.

A client (its budget key: an address, or an IPv6 /64) that signed in to a number within
``KNOWN_CLIENT_DAYS`` is exempt from that number's ``password`` lock, checked in the same reserve
call (the number's known clients are a sorted set in the number's hash slot); its own ``login``
budget still applies. See docs/rate-limiting.md for the trade-off.

Time comes from the caller's clock (milliseconds, ``clock`` is injectable for tests) rather than
Redis ``TIME``: the window arithmetic can then be driven exactly in tests, and the scripts stay
deterministic. The app hosts must keep their clocks synchronised (NTP); a host ``s`` seconds off
shifts the windows of the attempts it records by ``s``, nothing more.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal

import msgspec
from redis.commands.core import AsyncScript

from app.core.errors import LimiterUnavailable
from app.core.redis import RedisClient
from app.core.redis_keys import BOUNDED_APPEND, STREAM_FIELD, KeySpace, stream_share
from app.core.settings import Settings
from app.ratelimit.coalescer import Coalescer
from app.ratelimit.transport import UNAVAILABLE, script_transport

# A number remembers at most this many clients that signed in to it (the most recent ones).
KNOWN_CLIENTS_PER_NUMBER = 16

Budget = Literal[
    "login",
    "register",
    "identifier",
    "password",
    "pin",
    "ussd_gateway",
    "ussd_session",
    "ussd_register",
    "ussd_register_number",
    "sms_client",
    "sms_prefix",
    "sms_resend",
    "sms_number_hour",
    "sms_number_day",
    "sms_global",
    "recovery_knowledge",
]
# Self-service recovery's SMS (app/recovery): every request that passes the one before counts (a hit).
SmsBudget = Literal["sms_client", "sms_prefix", "sms_resend", "sms_number_hour", "sms_number_day", "sms_global"]
UssdRegistrationBudget = Literal["ussd_register", "ussd_register_number"]
# Budgets keyed by a caller (an address, a gateway credential, a USSD session), not a phone number.
CLIENT_BUDGETS = frozenset(
    {"login", "register", "identifier", "ussd_gateway", "ussd_session", "ussd_register", "sms_client", "sms_prefix"}
    | {"sms_global"}
)
# Budgets whose every attempt counts at once (a hit, nothing to settle).
HIT_BUDGETS = frozenset(
    {"register", "identifier", "ussd_register", "ussd_register_number"}
    | {"sms_client", "sms_prefix", "sms_resend", "sms_number_hour", "sms_number_day", "sms_global"}
)
Outcome = Literal["success", "failure", "release"]
_OUTCOME_CODES: dict[str, str] = {"success": "s", "failure": "f", "release": "r"}

# Every error of the store means "no budget could be taken": the caller fails closed (503, and the
# attempt still reaches the audit trail), never open. That covers a script error or BUSY as much as
# a lost connection: a login path that let those escape answered 500 with no audit record.
_UNAVAILABLE = UNAVAILABLE


@dataclass(frozen=True)
class Reservation:
    """A slot taken in a budget, to settle once the credential has been verified."""

    key: str
    member: str
    shard: int
    budget: Budget
    # Budgets whose failures a success clears: the phone's PIN lock, for PIN and password logins.
    clears: tuple[str, ...] = ()
    # Wall-clock milliseconds (the limiter's clock) at which the slot lapses unless settled: work
    # that cannot finish by then must not start, or the next attempt could take the slot meanwhile.
    lapses_at_ms: int = 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int  # slots left after this reservation (0 when refused)
    retry_after: int  # whole seconds until a slot frees, when refused; 0 when allowed
    window: int  # seconds
    reservation: Reservation | None
    reason: str | None  # "rate_limited" | "account_locked" | "pin_locked" when refused
    reset_after: int = 0  # when allowed: whole seconds until the oldest counted failure leaves the window
    # When refused with a refusal event: it is in the audit stream. False: the stream was full, the
    # caller must store the event itself.
    event_queued: bool = False


def rate_limit_headers(
    policy: str, decision: Decision, outcome: Literal["success", "failure"] | None = None
) -> dict[str, str]:
    """draft-ietf-httpapi-ratelimit-headers: the policy, what is left, and when it resets.

    ``outcome`` is how the attempt holding this decision's slot ended: a success gives its slot
    back, a failure keeps it until it leaves the window.
    """
    remaining = decision.remaining
    reset = decision.reset_after if decision.allowed else decision.retry_after
    if outcome == "success":
        remaining = min(decision.limit, remaining + 1)
    elif outcome == "failure":
        reset = decision.reset_after or decision.window
    return {
        "RateLimit-Policy": f'"{policy}";q={decision.limit};w={decision.window}',
        "RateLimit": f'"{policy}";r={remaining};t={reset}',
    }


@dataclass(frozen=True)
class ScriptCall:
    """One script invocation: what :meth:`LoginLimiter.execute` sends, one per budget touched."""

    script: AsyncScript
    keys: tuple[str, ...]
    args: tuple[str | int | bytes, ...]


@dataclass(frozen=True)
class _Policy:
    limit: int
    window_ms: int
    reason: str


class _EventPhone(msgspec.Struct):
    phone_number: str


_event_phone = msgspec.json.Decoder(_EventPhone)


def _script_source(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


class LoginLimiter:
    """The budgets of the login and registration endpoints."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
        self._policies: dict[str, _Policy] = {
            "login": _Policy(
                settings.rate_limit_login_failures, settings.rate_limit_login_window_seconds * 1000, "rate_limited"
            ),
            "register": _Policy(settings.register_limit, settings.register_window_seconds * 1000, "rate_limited"),
            "identifier": _Policy(settings.profile_identifier_changes, 3_600_000, "rate_limited"),
            "password": _Policy(
                settings.account_max_failures, settings.account_window_seconds * 1000, "account_locked"
            ),
            "pin": _Policy(settings.pin_max_failures, settings.pin_lock_seconds * 1000, "pin_locked"),
            "ussd_gateway": _Policy(settings.ussd_max_failures_per_minute, 60_000, "rate_limited"),
            "ussd_session": _Policy(
                settings.ussd_session_max_failures, settings.ussd_session_seconds * 1000, "session_locked"
            ),
            "ussd_register": _Policy(settings.ussd_registrations_per_minute, 60_000, "rate_limited"),
            "ussd_register_number": _Policy(
                settings.ussd_registrations_per_number_per_day, 24 * 3_600_000, "rate_limited"
            ),
            "sms_client": _Policy(settings.sms_per_client_per_hour, 3_600_000, "rate_limited"),
            "sms_prefix": _Policy(settings.sms_per_prefix_per_hour, 3_600_000, "rate_limited"),
            "sms_resend": _Policy(1, settings.sms_resend_seconds * 1000, "rate_limited"),
            "sms_number_hour": _Policy(settings.sms_per_number_per_hour, 3_600_000, "rate_limited"),
            "sms_number_day": _Policy(settings.sms_per_number_per_day, 24 * 3_600_000, "rate_limited"),
            "sms_global": _Policy(settings.sms_daily_budget, 24 * 3_600_000, "sms_budget_spent"),
            # Wrong answers to the USSD PIN reset's knowledge check, per number (app/recovery).
            "recovery_knowledge": _Policy(3, 24 * 3_600_000, "rate_limited"),
        }
        for budget, policy in self._policies.items():
            if policy.limit < 1 or policy.window_ms < 1000:
                raise ValueError(f"the {budget} budget needs a limit and a window of at least 1")
        self._hold_ms = settings.rate_limit_reservation_seconds * 1000
        if self._hold_ms < 1000:
            raise ValueError("rate_limit_reservation_seconds must be at least 1")
        self._coalescer = Coalescer(self._run_batch)
        self._transport = script_transport(redis)
        self._reserve = redis.register_script(_script_source("reserve.lua"))
        self._settle = redis.register_script(_script_source("settle.lua"))
        self._remember = redis.register_script(_script_source("remember.lua"))
        self._known_ms = settings.known_client_days * 24 * 3600 * 1000
        self._append = redis.register_script(BOUNDED_APPEND)
        self._stream_share = stream_share(settings.audit_max_backlog, settings.redis_shards)

    # ---- the contract the HTTP layer uses ------------------------------------------------------

    async def reserve_client(self, client_key: str, refusal_event: bytes | None = None) -> Decision:
        """Take a slot of the client's login budget; a refusal records ``refusal_event`` atomically."""
        call = self.reserve_call("login", client_key, refusal_event)
        (reply,) = await self.execute([call])
        return self.decision("login", client_key, reply, reserved_at_ms=int(call.args[0]))

    async def reserve_account(
        self,
        phone: str,
        method: Literal["password", "pin"],
        refusal_event: bytes | None = None,
        known_client: str | None = None,
    ) -> Decision:
        """Take a slot of the number's PIN lock or password window (``phone`` in E.164).

        ``known_client``: the client's budget key; a client that signed in to this number recently
        is exempt from its password lock.
        """
        call = self.reserve_call(method, phone, refusal_event, known_client=known_client)
        (reply,) = await self.execute([call])
        return self.decision(method, phone, reply, reserved_at_ms=int(call.args[0]))

    async def hit_register(self, client_key: str) -> Decision:
        """Count a registration attempt of the client, or refuse it; nothing to settle."""
        return await self._hit("register", client_key)

    async def hit_identifier_change(self, user_id: int) -> Decision:
        """Count an attempt of account ``user_id`` to change its email or phone number (found or taken alike)."""
        return await self._hit("identifier", f"user:{user_id}")

    async def hit_ussd_registration(self, budget: UssdRegistrationBudget, identity: str) -> Decision:
        """Count a USSD registration against the gateway credential's (``identity``: its name) or the
        number's (E.164) budget, or refuse it; nothing to settle."""
        return await self._hit(budget, identity)

    async def hit_sms(self, budget: SmsBudget, identity: str) -> Decision:
        """Count an SMS request against one of its budgets (``identity``: a client key, a number prefix,
        a number, or ``"all"``), or refuse it; nothing to settle."""
        return await self._hit(budget, identity)

    async def _hit(self, budget: Budget, identity: str) -> Decision:
        (reply,) = await self.execute([self.reserve_call(budget, identity, mode="h")])
        return self.decision(budget, identity, reply)

    async def settle(self, reservation: Reservation, outcome: Outcome, event: bytes | None = None) -> bool:
        """Settle one reservation; ``event`` is appended to the audit stream of its shard in the same call.

        False when ``event`` was not appended (its stream is full): the caller stores it elsewhere.
        """
        (reply,) = await self.execute([self.settle_call(reservation, outcome, event)])
        return bool(int(reply))

    async def settle_login(
        self,
        client: Reservation | None,
        account: Reservation | None,
        method: Literal["password", "pin"],
        success: bool,
        event: bytes | None,
        shard_identity: str | None = None,
        remember: tuple[str, str] | None = None,
    ) -> bool:
        """Settle both reservations of a login attempt and publish its event, in one round trip.

        The event goes with the client's settle (the client's shard stream); without a client
        reservation, with the account's (the phone's shard stream); with neither, a plain XADD to the
        stream of ``shard_identity``'s shard (the client key), or of the event's phone number when
        not given. A success clears the number's PIN lock whatever the method, through
        ``account.clears``, so pass the account reservation whenever one was taken; and a success
        with ``remember`` (phone, client key) makes that client known to the number, in the same
        round trip. False when the event was not appended because its stream is full: the caller
        stores it elsewhere.
        """
        if account is not None and account.budget != method:
            raise ValueError(f"account reservation is for {account.budget}, not {method}")
        outcome: Outcome = "success" if success else "failure"
        calls: list[ScriptCall] = []
        if client is not None:
            calls.append(self.settle_call(client, outcome, event))
        if account is not None:
            calls.append(self.settle_call(account, outcome, event if client is None else None))
        if calls:
            if success and remember is not None:
                calls.append(self.remember_call(*remember))
            replies = await self.execute(calls)
            return bool(int(replies[0]))  # the first call carries the event
        if event is None:
            return True
        identity = shard_identity if shard_identity is not None else _event_phone.decode(event).phone_number
        stream = self.keys.audit_stream(self.keys.shard_of(identity))
        try:
            appended = await self._append(keys=[stream], args=[self._stream_share, STREAM_FIELD, event])
        except _UNAVAILABLE as exc:
            raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc
        return bool(int(appended))

    # ---- building blocks, for pipelining many requests' calls together -------------------------

    def budget_key(self, budget: Budget, identity: str) -> str:
        if budget in CLIENT_BUDGETS:
            return self.keys.client(identity, budget)
        return self.keys.phone(identity, budget)

    def reserve_call(
        self,
        budget: Budget,
        identity: str,
        refusal_event: bytes | None = None,
        *,
        mode: Literal["r", "h"] = "r",
        known_client: str | None = None,
    ) -> ScriptCall:
        """The reserve script call for ``identity``'s budget: its key and its shard's stream share a slot.

        ``known_client`` (password budget only): exempt that client if it signed in to the number recently.
        """
        policy = self._policies[budget]
        key = self.budget_key(budget, identity)
        # An integer is the most compact listpack entry. Not a secret (it never leaves Redis, and a
        # clash only lengthens it), so the fast PRNG: secrets' urandom call was a measurable share of a refusal.
        member = str(random.getrandbits(32))
        now = self._now_ms()
        args: tuple[str | int | bytes, ...] = (now, policy.window_ms, policy.limit, self._hold_ms, member, mode)
        if known_client is not None and budget == "password":
            stream = self.keys.audit_stream(self.keys.shard_of(identity))
            known = self.keys.phone(identity, "known")
            event = refusal_event if refusal_event is not None else b""
            exemption = (known_client, now - self._known_ms)
            return ScriptCall(
                self._reserve, (key, stream, known), (*args, STREAM_FIELD, event, self._stream_share, *exemption)
            )
        if refusal_event is None:
            return ScriptCall(self._reserve, (key,), args)
        stream = self.keys.audit_stream(self.keys.shard_of(identity))
        return ScriptCall(self._reserve, (key, stream), (*args, STREAM_FIELD, refusal_event, self._stream_share))

    def remember_call(self, phone: str, client_key: str) -> ScriptCall:
        """Make ``client_key`` known to ``phone`` (it just signed in): see ``remember.lua``."""
        key = self.keys.phone(phone, "known")
        args = (self._now_ms(), self._known_ms, KNOWN_CLIENTS_PER_NUMBER, client_key)
        return ScriptCall(self._remember, (key,), args)

    def settle_call(self, reservation: Reservation, outcome: Outcome, event: bytes | None = None) -> ScriptCall:
        policy = self._policies[reservation.budget]
        clears = reservation.clears if outcome == "success" else ()
        keys = (reservation.key, *clears)
        args: tuple[str | int | bytes, ...] = (
            self._now_ms(),
            policy.window_ms,
            self._hold_ms,
            reservation.member,
            _OUTCOME_CODES[outcome],
            len(clears),
        )
        if event is not None:
            keys = (*keys, self.keys.audit_stream(reservation.shard))
            args = (*args, STREAM_FIELD, event, self._stream_share)
        return ScriptCall(self._settle, keys, args)

    def decision(self, budget: Budget, identity: str, reply: Any, reserved_at_ms: int | None = None) -> Decision:
        """The :class:`Decision` a reserve reply means; ``reserved_at_ms``: the ``now`` the call was sent with."""
        policy = self._policies[budget]
        window = policy.window_ms // 1000
        if not int(reply[0]):
            queued = len(reply) > 2 and bool(int(reply[2]))
            return Decision(False, policy.limit, 0, int(reply[1]), window, None, policy.reason, event_queued=queued)
        reservation = None
        if budget not in HIT_BUDGETS:
            member = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
            key = self.budget_key(budget, identity)
            clears = (self.keys.phone(identity, "pin"),) if budget in ("pin", "password") else ()
            lapses_at = (reserved_at_ms if reserved_at_ms is not None else self._now_ms()) + self._hold_ms
            reservation = Reservation(key, member, self.keys.shard_of(identity), budget, clears, lapses_at)
        reset_after = int(reply[3]) if len(reply) > 3 else 0
        return Decision(True, policy.limit, int(reply[1]), 0, window, reservation, None, reset_after)

    async def execute(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run the calls in one round trip, together with other requests' calls of this moment.

        Calls made during one turn of the event loop go to Redis as one pipeline: under a storm
        that is one write and one read for dozens of requests instead of one each. After a Redis
        restart or ``SCRIPT FLUSH`` the scripts are loaded again and only the calls that met
        NOSCRIPT are re-sent: those never ran, so nothing is applied twice.
        """
        if len(calls) == 1:  # most requests: no task to gather one future
            return [await self._coalescer.submit(calls[0])]
        return list(await asyncio.gather(*(self._coalescer.submit(call) for call in calls)))

    async def _run_batch(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """One pipeline per Redis node for a batch; a per-call error is returned in its place."""
        return await self._transport.run(calls)

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)
