"""Attacks on webhook delivery: what reaches a receiver after the operator or an erasure said it must not.

A round of the deliverer reads a batch of due deliveries (one per user, with each event's payload) and
sends them one after another; a slow receiver stretches that over many request timeouts. Here the first
request of a round hangs at a real receiver while an admin erases another account through the API, or
the operator removes the endpoint with the CLI; then the receiver lets go and we read what it got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from app.core.settings import Settings
from app.webhooks.deliverer import WebhookDeliverer
from tests.admin.support import panel_admin
from tests.helpers import e164, new_phone, registered
from tests.platform.support import arun_cli
from tests.webhooks.support import Receiver, add_endpoint, emit, eventually, new_user

ADMIN = "/api/admin/users"


@pytest.fixture
def patient(settings: Settings) -> Settings:
    """A request timeout longer than the test: the hanging request stays open while the attack happens."""
    return msgspec.structs.replace(settings, webhooks_timeout_seconds=60.0, webhooks_retry_base_seconds=0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


async def round_with_first_request_hanging(settings: Settings, receiver: Receiver) -> tuple[WebhookDeliverer, Any]:
    assert settings.database_url
    deliverer = WebhookDeliverer(settings.database_url, settings)
    receiver.answers = ["hang"]
    running = asyncio.create_task(deliverer.run_once())
    await eventually(lambda: receiver.in_flight == 1, 20, "the first delivery to hang at the receiver")
    return deliverer, running


async def test_an_account_erased_during_a_round_is_not_sent_afterwards(
    client: Any, db: Any, patient: Settings, receiver: Receiver
) -> None:
    admin, _ = await panel_admin(client, db)
    endpoint = await add_endpoint(patient, receiver)
    people = {}
    for name in ("Ineza Mukamana", "Gatete Uwera"):
        phone = new_phone()
        account = await registered(client, name=name, phone_number=phone)
        people[account["user_id"]] = (name, e164(phone))

    deliverer, running = await round_with_first_request_hanging(patient, receiver)
    try:
        first = json.loads(receiver.requests[0][0])["user_id"]
        [erased] = [user_id for user_id in people if user_id != first]
        deleted = await client.delete(f"{ADMIN}/{erased}", headers=admin)
        assert deleted.status_code == 200, deleted.text
        receiver.release()
        await running
    finally:
        receiver.release()
        await deliverer.close()

    # The operator replays everything since before these accounts existed: the erased one goes out scrubbed.
    replayed = await arun_cli(patient, "webhooks", "replay", "--endpoint", str(endpoint), "--since", "2000-01-01")
    assert replayed.exit_code == 0, replayed.output
    sent_before = len(receiver.requests)
    assert patient.database_url
    again = WebhookDeliverer(patient.database_url, patient)
    try:
        while await again.run_once():
            pass
    finally:
        await again.close()
    assert any(json.loads(body)["user_id"] == erased for body, _ in receiver.requests[sent_before:])

    name, phone = people[erased]
    for body, _ in receiver.requests:
        text = body.decode()
        assert name not in text and phone not in text and phone[1:] not in text, (
            f"sent after the account was erased: {text}"
        )


async def test_a_removed_endpoint_gets_nothing_more_from_the_round_in_flight(
    patient: Settings, receiver: Receiver
) -> None:
    """``webhooks remove`` promises pending deliveries are never sent; the operator removes an endpoint
    that points somewhere it must not (a mistyped domain): the round that already read its batch went on."""
    endpoint = await add_endpoint(patient, receiver)
    for _ in range(4):
        await emit(patient, await new_user(patient, new_phone()))

    deliverer, running = await round_with_first_request_hanging(patient, receiver)
    try:
        removed = await arun_cli(patient, "webhooks", "remove", str(endpoint))
        assert removed.exit_code == 0, removed.output
        receiver.release()
        await running
    finally:
        receiver.release()
        await deliverer.close()
    assert len(receiver.requests) == 1, f"{len(receiver.requests) - 1} deliveries sent after the endpoint's removal"


async def test_a_replay_during_a_round_keeps_each_users_order(patient: Settings, receiver: Receiver) -> None:
    """The operator replays a user's events while a round is under way: the round's batch, read before
    the replay, held that user's newest event, which must now wait for the replayed earlier ones."""
    assert patient.database_url
    endpoint = await add_endpoint(patient, receiver)
    user = await new_user(patient, new_phone())
    first_event, *_ = await emit(patient, user, 4)
    deliverer = WebhookDeliverer(patient.database_url, patient)
    try:
        while await deliverer.run_once():
            pass
        await emit(patient, await new_user(patient, new_phone()))  # the other user's delivery: due first
        await deliverer.fan_out()
        await emit(patient, user)  # seq 5
        await deliverer.fan_out()
    finally:
        await deliverer.close()
    assert [json.loads(body)["seq"] for body, _ in receiver.requests] == [1, 2, 3, 4]

    deliverer, running = await round_with_first_request_hanging(patient, receiver)
    try:
        replayed = await arun_cli(patient, "webhooks", "replay", "--endpoint", str(endpoint), "--since", first_event)
        assert replayed.exit_code == 0, replayed.output
        receiver.release()
        await running
        while await deliverer.run_once():
            pass
    finally:
        receiver.release()
        await deliverer.close()
    after_replay = [json.loads(body)["seq"] for body, _ in receiver.requests[4:] if json.loads(body)["user_id"] == user]
    assert after_replay == [1, 2, 3, 4, 5], f"the user's events after the replay arrived as {after_replay}"
