"""SMS pumping reproduced against the app: the stand-in counts what would have been paid for.

Every number in these runs has an account (inserted straight into the table), so every request
that got past the budgets would have cost a message: the stand-in's count is the bill.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from tests.helpers import e164, new_phone
from tests.recovery.stand_in import SmsStandIn
from tests.recovery.support import audit_rows, insert_accounts, start

PROXIED = {"trusted_proxies": ["127.0.0.1/32"], "sms_answer_ms": 0}
_addresses = itertools.count(1)


def next_address() -> str:
    index = next(_addresses)
    return f"198.51.{index // 250 % 250}.{index % 250 + 1}"


async def in_waves(calls: list[Any], size: int = 50) -> list[Any]:
    answers: list[Any] = []
    for offset in range(0, len(calls), size):
        answers += await asyncio.gather(*calls[offset : offset + size])
    return answers


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_a_thousand_numbers_from_one_address(client: Any, db: Any, settings: Any, sms: SmsStandIn) -> None:
    phones = [e164(new_phone()) for _ in range(1000)]
    await insert_accounts(db, phones)
    answers = await in_waves([start(client, phone, forwarded_for="203.0.113.9") for phone in phones])
    assert len(sms.messages) == settings.sms_per_client_per_hour
    assert sum(answer.status_code == 202 for answer in answers) == settings.sms_per_client_per_hour
    assert {answer.status_code for answer in answers} == {202, 429}
    rows = await audit_rows(db, "sms", len(phones))
    assert len(rows) == len(phones)  # every request audited, once
    assert sum(row["reason"] == "code_sent" for row in rows) == len(sms.messages)


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_one_number_fifty_times_from_many_addresses(client: Any, db: Any, settings: Any, sms: SmsStandIn) -> None:
    phone = e164(new_phone())
    await insert_accounts(db, [phone])
    answers = await asyncio.gather(*(start(client, phone, forwarded_for=next_address()) for _ in range(50)))
    assert len(sms.to(phone)) == 1  # the resend cool-down; the hour allows 3 at most anyway
    assert len(sms.to(phone)) <= settings.sms_per_number_per_hour
    assert sorted(answer.status_code for answer in answers) == [202] + [429] * 49
    assert len(await audit_rows(db, "sms", 50)) == 50


@pytest.mark.parametrize("settings", [{**PROXIED, "sms_resend_seconds": 1}], indirect=True)
async def test_one_number_over_an_hour_gets_at_most_its_hourly_budget(
    client: Any, db: Any, settings: Any, sms: SmsStandIn
) -> None:
    phone = e164(new_phone())
    await insert_accounts(db, [phone])
    for _ in range(settings.sms_per_number_per_hour + 2):
        await start(client, phone, forwarded_for=next_address())
        await asyncio.sleep(1.05)  # past the cool-down each time
    assert len(sms.to(phone)) == settings.sms_per_number_per_hour


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_a_sweep_of_one_prefix_from_many_addresses(client: Any, db: Any, settings: Any, sms: SmsStandIn) -> None:
    phones = [f"+25078899{n:04d}" for n in range(200)]  # +250788990000-0199: two prefixes of 1,000
    await insert_accounts(db, phones)
    answers = await in_waves([start(client, phone, forwarded_for=next_address()) for phone in phones])
    prefixes = {phone[:-3] for phone in phones}
    assert len(prefixes) == 1
    assert len(sms.messages) == settings.sms_per_prefix_per_hour
    assert sum(answer.status_code == 202 for answer in answers) == settings.sms_per_prefix_per_hour


@pytest.mark.parametrize("settings", [{**PROXIED, "sms_daily_budget": 7}], indirect=True)
async def test_the_global_daily_budget_cuts_sms_off_and_points_to_ussd(
    client: Any, db: Any, settings: Any, sms: SmsStandIn
) -> None:
    phones = [f"+25078{5000 + n:04d}{n:03d}" for n in range(20)]  # twenty prefixes
    await insert_accounts(db, phones)
    before = (await client.get("/health")).json()["checks"]["sms"]
    assert before["sending"] is True and before["daily_budget_left"] == settings.sms_daily_budget
    answers = await in_waves([start(client, phone, forwarded_for=next_address()) for phone in phones])
    assert len(sms.messages) == settings.sms_daily_budget
    cut = [answer for answer in answers if answer.status_code == 503]
    assert len(cut) == len(phones) - settings.sms_daily_budget
    assert cut[0].json()["code"] == "sms_unavailable" and "USSD" in cut[0].json()["message"]
    unknown = await start(client, e164(new_phone()), forwarded_for=next_address())
    assert unknown.status_code == 503  # the cut-off does not tell who has an account
    await asyncio.sleep(1.1)  # past the health checks' one-second cache
    health = await client.get("/health")
    assert health.status_code == 200  # not an outage: the host stays in its load balancer
    assert health.json()["checks"]["sms"]["sending"] is False
    assert health.json()["checks"]["sms"]["daily_budget_left"] == 0
    rows = await audit_rows(db, "sms", len(phones) + 1)
    assert sum(row["reason"] == "sms_budget_spent" for row in rows) == len(cut) + 1
