"""recovery/start must not tell which numbers have accounts: same status, body, headers and time.

Timed by the method of tests/adversarial/test_enumeration.py: the groups' requests interleaved in a
shuffled order each round after a warm-up, compared by the median of their per-round ratios.
Without the padding, a number with an account (a code stored, the provider called) answers later
than one without; with it, both answer at ``SMS_ANSWER_MS``.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import pytest

from tests.adversarial.test_enumeration import MAX_MEDIAN_GAP, widest_gap
from tests.helpers import e164, new_phone
from tests.recovery.stand_in import SmsStandIn
from tests.recovery.support import insert_accounts

ROUNDS = 15
WARM_UP = 2
UNLIMITED = {"trusted_proxies": ["127.0.0.1/32"], "sms_per_prefix_per_hour": 1_000, "audit_writer_enabled": False}
_addresses = itertools.count(1)


async def timed_start(client: Any, phone: str) -> tuple[float, Any]:
    index = next(_addresses)
    address = f"192.0.2.{index % 250 + 1}" if index < 250 else f"198.18.{index // 250}.{index % 250 + 1}"
    began = time.perf_counter()
    response = await client.post(
        "/api/auth/recovery/start", json={"phone_number": phone}, headers={"X-Forwarded-For": address}
    )
    return time.perf_counter() - began, response


@pytest.mark.parametrize("settings", [UNLIMITED], indirect=True)
async def test_start_reads_and_takes_the_same_with_or_without_an_account(client: Any, db: Any, sms: SmsStandIn) -> None:
    known = [e164(new_phone()) for _ in range(2 * (ROUNDS + WARM_UP))]
    await insert_accounts(db, known)
    with_account = iter(known)
    groups = {"no account": lambda: e164(new_phone()), "with an account": lambda: next(with_account)}
    for _ in range(2):  # one retry for a run that a neighbour's burst of load skewed
        times: dict[str, list[float]] = {name: [] for name in groups}
        responses = []
        for round_ in range(WARM_UP + ROUNDS):
            order = list(groups)
            random.shuffle(order)
            for name in order:
                elapsed, response = await timed_start(client, groups[name]())
                responses.append(response)
                if round_ >= WARM_UP:
                    times[name].append(elapsed)
        gap, medians = widest_gap(times)
        if gap < MAX_MEDIAN_GAP:
            break
    summary = {name: f"{median * 1000:.1f} ms" for name, median in medians.items()}
    assert gap < MAX_MEDIAN_GAP, f"answers differ by {gap:.0%} (median per-round ratio); medians {summary}"
    assert {response.status_code for response in responses} == {202}
    assert len({response.content for response in responses}) == 1
    header_sets = {tuple(sorted((k, v) for k, v in r.headers.items() if k != "date")) for r in responses}
    assert len(header_sets) == 1, header_sets
    assert len(sms.messages) == len(responses) // 2  # a message to each number with an account, none to the others
    assert {message.form["to"] for message in sms.messages} <= set(known)
