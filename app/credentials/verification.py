"""The hash queue in front of the verifier threads: deadlines, load shedding, and failure padding.

A verification holds budget reservations that lapse (``RATE_LIMIT_RESERVATION_SECONDS``). One that
waited in the thread pool past that lapse would let the next attempt take its slot while it still
runs, so more guesses get verified than the budget allows. So each job checks, in its hash thread
right before hashing, that it can still finish before its deadline; and no job is queued beyond
what the threads can verify within one reservation (the bound), the rest is shed at once. Both
answer 503 ``busy``.

Failed verifications are padded (``asyncio.sleep``, no CPU) to the cost of the slowest verifier
configured, so that a failure's answer time does not say whether the account has an argon2id hash,
a Flask-era bcrypt hash or none. Costs are running averages of the verifications actually run,
seeded by one measurement of each verifier at start.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache
from typing import Literal, TypeVar

import bcrypt

from app.core.errors import AppError

T = TypeVar("T")
Kind = Literal["argon2", "bcrypt"]

# Weight of the newest measurement in a verifier's running cost.
_SMOOTHING = 0.2


class VerificationBusy(AppError):
    """Too much hash work queued to verify this attempt within its reservation; nothing was verified."""

    status_code = 503
    code = "busy"
    message = "The service is busy. Please try again in a moment."


@cache
def bcrypt_cost(rounds: int) -> float:
    """Seconds one bcrypt verification of ``rounds`` takes here (measured once per process)."""
    started = time.perf_counter()
    bcrypt.hashpw(b"calibration", bcrypt.gensalt(rounds=rounds))
    return time.perf_counter() - started


class VerifierCosts:
    """What each verifier costs now, in seconds: a running average, seeded by a measurement."""

    def __init__(self, seeds: dict[Kind, float]) -> None:
        self._cost: dict[Kind, float] = dict(seeds)

    def observe(self, kind: Kind, seconds: float) -> None:
        previous = self._cost.get(kind)
        self._cost[kind] = seconds if previous is None else previous + _SMOOTHING * (seconds - previous)

    @property
    def slowest(self) -> float:
        return max(self._cost.values(), default=0.0)


class HashQueue:
    """Runs verifications on ``executor`` (``threads`` wide) under a deadline and a queue bound."""

    def __init__(
        self,
        executor: Executor,
        threads: int,
        reservation_seconds: float,
        costs: VerifierCosts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._executor = executor
        self._threads = max(1, threads)
        self._reservation_seconds = reservation_seconds
        self.costs = costs
        self._clock = clock
        self.in_flight = 0

    @property
    def bound(self) -> int:
        """Verifications that may be queued or running: what the threads finish within one reservation."""
        slowest = self.costs.slowest
        if slowest <= 0:
            return self._threads
        return max(self._threads, math.floor(self._threads * self._reservation_seconds / slowest))

    def _busy(self) -> VerificationBusy:
        drain = math.ceil(self.in_flight * self.costs.slowest / self._threads)
        return VerificationBusy(headers={"Retry-After": str(max(1, drain))})

    async def verify(
        self, kind: Kind, fn: Callable[..., T], *args: object, deadline_ms: int | None = None
    ) -> tuple[T, float]:
        """``fn(*args)`` and the seconds it took, in a hash thread, unless it could not finish by
        ``deadline_ms`` (wall-clock milliseconds, the limiter's clock)."""
        if self.in_flight >= self.bound:
            raise self._busy()
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._timed, kind, fn, args, deadline_ms)
        finally:
            self.in_flight -= 1

    async def pad_failure(self, spent: float) -> None:
        """Make a failed verification that took ``spent`` seconds last as long as the slowest verifier."""
        remainder = self.costs.slowest - spent
        if remainder > 0:
            await asyncio.sleep(remainder)

    def _timed(
        self, kind: Kind, fn: Callable[..., T], args: tuple[object, ...], deadline_ms: int | None
    ) -> tuple[T, float]:
        # In the hash thread, right before hashing: the wait in the queue is over.
        if deadline_ms is not None and (self._clock() + self.costs.slowest) * 1000 > deadline_ms:
            raise self._busy()
        started = time.perf_counter()
        result = fn(*args)
        spent = time.perf_counter() - started
        self.costs.observe(kind, spent)
        return result, spent
