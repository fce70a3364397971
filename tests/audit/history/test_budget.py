"""Each account's share of the audit database's time (app/audit/history/budget.py)."""

from __future__ import annotations

import math

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.audit.history.budget import AuditBudgetSpent, ReadBudget
from tests.audit.history.support import staff_token
from tests.helpers import bearer

SUMMARY = "/api/audit/summary"
ATTEMPTS = "/api/audit/login-attempts"
WAIT_SECONDS = 0.5  # AUDIT_READ_WAIT_SECONDS in these tests


@pytest.fixture
def settings(settings):
    return msgspec.structs.replace(settings, audit_read_wait_seconds=WAIT_SECONDS)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_for(budget: ReadBudget, account: int) -> int | None:
    """Retry-After of a refusal, or None when the read may start."""
    try:
        budget.check(account)
    except AuditBudgetSpent as refusal:
        return int(refusal.headers["Retry-After"])
    return None


def test_an_account_past_its_seconds_waits_for_them_to_refill_and_others_are_untouched():
    clock = Clock()
    budget = ReadBudget(12, clock=clock)  # 12 s a minute: refilled at 0.2 s a second
    for _ in range(11):
        assert refused_for(budget, 1) is None
        budget.charge(1, 1.0)
    wait = refused_for(budget, 1)  # owes 11 s...
    assert wait is None  # ...less than its 12
    budget.charge(1, 3.0)  # 14 s owed: 2 s past the budget, 10 s of refill
    wait = refused_for(budget, 1)
    assert wait == math.ceil(2 / 0.2 + 1)
    assert refused_for(budget, 2) is None  # another account
    clock.now += wait - 1
    assert refused_for(budget, 1) is not None
    clock.now += 1
    assert refused_for(budget, 1) is None


@given(st.lists(st.tuples(st.floats(0, 30), st.floats(0, 5)), max_size=40))
def test_against_a_model_refused_exactly_past_the_budget_and_retry_after_is_enough_and_short(steps):
    """The model: what is owed decays at capacity/60 a second; a read is refused once it reaches the capacity."""
    capacity, rate = 6.0, 0.1
    clock = Clock()
    budget = ReadBudget(capacity, clock=clock)
    owed = 0.0
    for waited, cost in steps:
        clock.now += waited
        owed = max(0.0, owed - waited * rate)
        wait = refused_for(budget, 7)
        if abs(owed - capacity) > 1e-6:  # (not on the boundary itself, where rounding decides)
            assert (wait is not None) == (owed > capacity)
        if wait is not None:
            assert (owed - capacity) / rate < wait <= (owed - capacity) / rate + 2  # enough, and no longer
            clock.now += wait
            owed = max(0.0, owed - wait * rate)
            assert refused_for(budget, 7) is None
        budget.charge(7, cost)
        owed += cost


def test_zero_turns_the_budget_off():
    budget = ReadBudget(0)
    budget.charge(1, 10_000)
    assert refused_for(budget, 1) is None


@pytest.mark.parametrize("path", [SUMMARY, ATTEMPTS])
async def test_an_account_that_spent_its_budget_hears_429_with_retry_after_and_others_still_read(app, client, db, path):
    token, account = await staff_token(client, db, "security")
    other_token, _ = await staff_token(client, db, "security")
    assert (await client.get(path, headers=bearer(token))).status_code == 200
    budget: ReadBudget = app.state.audit_pool.budget
    budget.charge(account["user_id"], budget.capacity + 30)  # as a minute of back-to-back summaries would
    refused = await client.get(path, headers=bearer(token))  # held AUDIT_READ_WAIT_SECONDS first
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "audit_budget_spent" and refused.json()["message"]
    assert 30 / budget.rate - WAIT_SECONDS - 5 < int(refused.headers["retry-after"]) <= 30 / budget.rate + 1
    assert (await client.get(path, headers=bearer(other_token))).status_code == 200


async def test_a_read_just_past_the_budget_is_held_until_there_is_room_then_served(app, client, db):
    token, account = await staff_token(client, db, "security")
    budget: ReadBudget = app.state.audit_pool.budget
    budget.charge(account["user_id"], budget.capacity + budget.rate * WAIT_SECONDS / 2)  # room in half the wait
    assert budget.wait(account["user_id"]) > 0
    assert (await client.get(SUMMARY, headers=bearer(token))).status_code == 200


async def test_the_reads_are_charged_what_they_took(app, client, db):
    token, account = await staff_token(client, db, "security")
    budget: ReadBudget = app.state.audit_pool.budget
    assert budget._owed(account["user_id"], budget._clock()) == 0
    assert (await client.get(SUMMARY, headers=bearer(token))).status_code == 200
    assert budget._owed(account["user_id"], budget._clock()) > 0


async def test_an_audit_read_uses_one_core_at_most(app, client):
    async def settings_of_a_read() -> tuple[str, str]:
        async with app.state.audit_pool.read() as conn:
            return await conn.fetchval("SHOW max_parallel_workers_per_gather"), await conn.fetchval("SHOW jit")

    # In the app's own event loop: its pool belongs there.
    assert await anyio.to_thread.run_sync(client.blocking_portal.call, settings_of_a_read) == ("0", "off")
