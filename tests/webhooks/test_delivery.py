"""Deliveries to a real receiver that checks each one with the Standard Webhooks reference code: signed,
filtered by type, retried with backoff, in order per user across an outage, dead-lettered, replayed."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from app.core.settings import ConfigError, Settings
from app.webhooks.deliverer import WebhookDeliverer, backoff_seconds
from tests.helpers import new_phone
from tests.webhooks.support import Receiver, add_endpoint, deliveries, emit, eventually, new_user


async def test_an_event_arrives_signed_and_verifies_with_the_reference_library(
    hook_settings: Settings, receiver: Receiver, deliverer: WebhookDeliverer
) -> None:
    user = await new_user(hook_settings, new_phone())
    endpoint = await add_endpoint(hook_settings, receiver)
    [event_id] = await emit(hook_settings, user)

    assert await deliverer.run_once() == 1

    assert receiver.refused == []
    [event] = receiver.accepted
    assert event["id"] == event_id and event["user_id"] == user and event["seq"] == 1
    assert event["type"] == "account.updated" and event["data"] == {"fields": {"personal_cycle_length": 20}}
    _, headers = receiver.requests[0]
    assert headers["webhook-id"] == event_id  # the same on every retry and replay: what receivers dedupe on
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    [row] = await deliveries(hook_settings, endpoint)
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert await deliverer.run_once() == 0  # delivered once, not again


async def test_an_endpoint_gets_only_the_types_it_asked_for_and_only_events_after_it_was_added(
    hook_settings: Settings, receiver: Receiver, deliverer: WebhookDeliverer
) -> None:
    user = await new_user(hook_settings, new_phone())
    await emit(hook_settings, user, 1, "account.deactivated")  # before the endpoint existed
    await deliverer.run_once()
    await add_endpoint(hook_settings, receiver, ["account.deactivated"])
    await emit(hook_settings, user, 2)
    [wanted] = await emit(hook_settings, user, 1, "account.deactivated")

    await deliverer.run_once()

    assert [event["id"] for event in receiver.accepted] == [wanted]


async def test_a_failed_delivery_is_retried_after_a_backoff_until_it_succeeds(
    hook_settings: Settings, receiver: Receiver
) -> None:
    tuned = msgspec.structs.replace(hook_settings, webhooks_retry_base_seconds=0.4, webhooks_retry_max_seconds=0.4)
    assert tuned.database_url
    deliverer = WebhookDeliverer(tuned.database_url, tuned)
    receiver.answers = [500, 503]
    user = await new_user(tuned, new_phone())
    endpoint = await add_endpoint(tuned, receiver)
    [event_id] = await emit(tuned, user)
    try:
        await deliverer.run_once()  # 500: the round goes on to other users, this one waits its backoff
        [row] = await deliveries(tuned, endpoint)
        assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"] == "HTTP 500"
        wait = (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds()
        assert 0.8 * 0.4 <= wait <= 1.2 * 0.4
        assert await deliverer.run_once() == 0  # not due yet: nothing is sent before its time

        deliverer.start()
        [row] = await settled(tuned, endpoint)
    finally:
        await deliverer.stop()
    assert [headers["webhook-id"] for _, headers in receiver.requests] == [event_id] * 3
    assert len(receiver.accepted) == 1
    assert row["status"] == "delivered" and row["attempts"] == 3 and row["last_error"] is None


def test_the_backoff_doubles_from_the_base_up_to_the_cap_with_jitter(settings: Settings) -> None:
    tuned = msgspec.structs.replace(settings, webhooks_retry_base_seconds=5.0, webhooks_retry_max_seconds=3600.0)
    rng = random.Random(7)
    nominal = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 3600.0, 3600.0]
    waits = [backoff_seconds(failures, tuned, rng) for failures in range(1, 13)]
    for wait, expected in zip(waits, nominal, strict=True):
        assert 0.8 * expected <= wait <= 1.2 * expected
    assert len({round(wait / expected, 6) for wait, expected in zip(waits, nominal, strict=True)}) > 1  # jittered


@pytest.mark.slow
async def test_each_users_events_arrive_in_order_across_a_receiver_outage(
    hook_settings: Settings, receiver: Receiver, deliverer: WebhookDeliverer
) -> None:
    alice, bob = await new_user(hook_settings, new_phone()), await new_user(hook_settings, new_phone())
    endpoint = await add_endpoint(hook_settings, receiver)
    deliverer.start()
    await emit(hook_settings, alice, 2)
    await eventually(lambda: receiver.seqs(alice) == [1, 2], 10, "alice's first two events")

    port, secret = receiver.port, receiver.secret
    receiver.close()  # down: connections refused
    await emit(hook_settings, alice, 3)
    await emit(hook_settings, bob, 3)
    rows = await failing(hook_settings, endpoint, attempts=4)
    assert any(row["last_error"] == "ConnectError" for row in rows)

    back = Receiver(port)  # up again on the same address, and answering 503 to its first requests
    back.secret = secret
    back.answers = [503, 503, 503]
    try:
        await eventually(lambda: back.seqs(alice) == [3, 4, 5] and back.seqs(bob) == [1, 2, 3], 15, "the backlog")
        assert back.refused == []
        rows = await settled(hook_settings, endpoint)
        assert {row["status"] for row in rows} == {"delivered"}
    finally:
        back.close()


async def failing(settings: Settings, endpoint: int, attempts: int) -> list[dict[str, Any]]:
    """The endpoint's deliveries once the pending ones have failed ``attempts`` times in all."""
    for _ in range(500):
        rows = await deliveries(settings, endpoint)
        if sum(row["attempts"] for row in rows if row["status"] == "pending") >= attempts:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"the pending deliveries never failed {attempts} times")


@pytest.mark.parametrize(
    "bad",
    [
        {"webhooks_retry_base_seconds": 10.0, "webhooks_retry_max_seconds": 5.0},
        {"webhooks_max_attempts": 0},
        {"webhooks_timeout_seconds": 0.0},
        {"webhooks_poll_ms": 0},
    ],
)
def test_unusable_webhook_settings_are_refused_at_start(settings: Settings, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="WEBHOOKS_"):
        msgspec.structs.replace(settings, **bad).validated()


async def settled(settings: Settings, endpoint: int) -> list[dict[str, Any]]:
    """The endpoint's deliveries once none is pending (the deliverer records an answer after it came)."""
    for _ in range(500):
        rows = await deliveries(settings, endpoint)
        if rows and all(row["status"] != "pending" for row in rows):
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError("deliveries still pending")


@pytest.mark.slow
async def test_deliverers_in_several_processes_take_turns_per_endpoint_and_keep_each_users_order(
    hook_settings: Settings, receiver: Receiver
) -> None:
    """Three deliverers with connections of their own, as three API processes would run them."""
    assert hook_settings.database_url
    receiver.delay = 0.01
    receiver.answers = [500, 200, 503, 200, 500]  # some failures, so retries interleave with new events
    users = [await new_user(hook_settings, new_phone()) for _ in range(3)]
    endpoint = await add_endpoint(hook_settings, receiver)
    deliverers = [WebhookDeliverer(hook_settings.database_url, hook_settings) for _ in range(3)]
    for deliverer in deliverers:
        deliverer.start()
    try:
        for _ in range(4):
            for user in users:
                await emit(hook_settings, user)
        rows = await settled(hook_settings, endpoint)
    finally:
        for deliverer in deliverers:
            await deliverer.stop()
    assert {row["status"] for row in rows} == {"delivered"}
    assert all(receiver.seqs(user) == [1, 2, 3, 4] for user in users)
    assert receiver.most_at_once == 1  # one deliverer at a time sent to the endpoint
