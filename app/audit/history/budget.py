"""Each account's share of the audit database's time: one account's flood of reads is slowed to it.

``AUDIT_READ_CONCURRENCY`` bounds how many history reads run at once in a process, not how much of the
machine they take: one account repeating summaries keeps a Postgres backend busy without pause, and
on a small host that core is one sign-in's argon2 needed (docs/benchmarks.md, audit flood). Here
every API read is charged the seconds it held its audit connection, and an account that has used
``AUDIT_READ_SECONDS_PER_MINUTE`` of them within about a minute has its next read held until the
budget has room (AuditPool), or answered 429 ``audit_budget_spent`` with Retry-After when that is
further away than ``AUDIT_READ_WAIT_SECONDS`` (held that long, give or take, first). The budget
refills continuously (a token bucket of that many seconds, charged after each read, when its cost is
known), so a person using the dashboard never meets it; a script polling as fast as it can does.

Kept per process, like the concurrency it complements: with ``--workers N`` an account may use N
budgets, still a fixed share of each worker's audit connection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from app.core.errors import AppError


class AuditBudgetSpent(AppError):
    status_code = 429
    code = "audit_budget_spent"
    message = "This account has used its share of the login history's time. Try again after Retry-After seconds."


class ReadBudget:
    """Seconds of audit reads per account, refilled at ``seconds_per_minute / 60`` a second up to
    ``seconds_per_minute``; ``seconds_per_minute`` 0 turns the budget off.

    Hand-written: the rate limiters at hand (the login limiter, pyrate-limiter) take a cost known
    before the request, and a read's cost is known only once it has run.
    """

    def __init__(self, seconds_per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(0.0, seconds_per_minute)
        self.rate = self.capacity / 60
        self._clock = clock
        self._debt: dict[int, tuple[float, float]] = {}  # account -> (seconds owed, as of when)

    def _owed(self, account: int, now: float) -> float:
        debt, since = self._debt.get(account, (0.0, now))
        owed = max(0.0, debt - (now - since) * self.rate)
        if owed == 0.0:
            self._debt.pop(account, None)  # refilled: nothing to keep
        return owed

    def wait(self, account: int | None) -> float:
        """Seconds until the account may start a read: 0 while it owes less than its budget."""
        if account is None or not self.capacity:
            return 0.0
        owed = self._owed(account, self._clock())
        return 0.0 if owed < self.capacity else (owed - self.capacity) / self.rate + 0.01

    def check(self, account: int | None) -> None:
        """Refuse (429 with Retry-After) while the account owes its whole budget."""
        if wait := self.wait(account):
            raise AuditBudgetSpent(headers={"Retry-After": str(math.ceil(wait))})

    def charge(self, account: int | None, seconds: float) -> None:
        if account is None or not self.capacity:
            return
        now = self._clock()
        self._debt[account] = (self._owed(account, now) + max(0.0, seconds), now)
