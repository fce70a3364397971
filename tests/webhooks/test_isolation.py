"""A hanging endpoint holds up neither the other endpoints nor sign-ins; and what a receiver's reference check
refuses: a tampered body, a captured delivery with its timestamp moved, one replayed after the tolerance."""

from __future__ import annotations

import asyncio
import datetime
import time

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.asgi import create_app, served
from app.core.settings import Settings
from app.webhooks.deliverer import WebhookDeliverer, signed_headers
from app.webhooks.sealing import new_secret
from tests.conftest import from_loopback
from tests.helpers import STRONG_PASSWORD, new_phone, registered
from tests.webhooks.support import Receiver, add_endpoint, deliveries, emit, eventually, new_user


@pytest.mark.slow
async def test_a_hanging_endpoint_delays_neither_the_other_endpoint_nor_sign_ins(
    hook_settings: Settings, receiver: Receiver
) -> None:
    # A timeout far longer than the test: the request to the hanging endpoint stays open throughout.
    settings = msgspec.structs.replace(hook_settings, webhooks_enabled=True, webhooks_timeout_seconds=120.0)
    hanging = Receiver()
    hanging.default = "hang"
    try:
        stuck = await add_endpoint(settings, hanging)
        await add_endpoint(settings, receiver)
        app = create_app(settings)
        async with AsyncTestClient(app=from_loopback(served(app)), raise_server_exceptions=False) as client:
            phone = new_phone()
            first = await registered(client, phone_number=phone)
            await eventually(lambda: hanging.in_flight == 1, 10, "the hanging endpoint to hold its request")
            await eventually(lambda: len(receiver.accepted) == 1, 10, "the other endpoint's copy")

            login = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
            assert login.status_code == 200, login.text
            second = await registered(client)
            await eventually(lambda: len(receiver.accepted) == 2, 10, "the second account's event")
            assert hanging.in_flight == 1  # all of this happened while that request was still hanging
            assert [event["user_id"] for event in receiver.accepted] == [first["user_id"], second["user_id"]]
        # Shutting down abandoned the hanging request: its delivery is pending, to be sent again.
        assert hanging.in_flight == 1
        assert [row["status"] for row in await deliveries(settings, stuck)] == ["pending", "pending"]
    finally:
        hanging.close()


async def test_a_request_that_hangs_past_the_timeout_counts_as_a_failed_attempt(
    hook_settings: Settings, receiver: Receiver
) -> None:
    tuned = msgspec.structs.replace(hook_settings, webhooks_timeout_seconds=0.3)
    assert tuned.database_url
    deliverer = WebhookDeliverer(tuned.database_url, tuned)
    receiver.default = "hang"
    endpoint = await add_endpoint(tuned, receiver)
    await emit(tuned, await new_user(tuned, new_phone()))
    try:
        assert await deliverer.run_once() == 1
    finally:
        await deliverer.close()
        receiver.release()
    [row] = await deliveries(tuned, endpoint)
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"] == "timeout"


async def test_the_reference_check_refuses_a_tampered_moved_or_stale_delivery(
    hook_settings: Settings, receiver: Receiver, deliverer: WebhookDeliverer
) -> None:
    user = await new_user(hook_settings, new_phone())
    await add_endpoint(hook_settings, receiver)
    await emit(hook_settings, user)
    await deliverer.run_once()
    [(body, headers)] = receiver.requests
    assert receiver.secret
    check = Webhook(receiver.secret)
    assert check.verify(body, headers)["user_id"] == user  # the captured delivery, as sent

    tampered = body.replace(f'"user_id":{user}'.encode(), f'"user_id":{user + 1}'.encode())
    assert tampered != body
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        check.verify(tampered, headers)

    moved = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        check.verify(body, moved)

    # The same capture replayed six minutes on: its signature is genuine, its timestamp too old.
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    stale = signed_headers(receiver.secret, headers["webhook-id"], body, then)
    assert abs(int(stale["webhook-timestamp"]) - (time.time() - 360)) < 5
    with pytest.raises(WebhookVerificationError, match="too old"):
        check.verify(body, stale)

    # Signed with any other endpoint's secret: refused.
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(new_secret()).verify(body, headers)


async def test_hanging_endpoints_hold_at_most_the_concurrency_of_rounds_and_connections(
    hook_settings: Settings,
) -> None:
    """Each round holds a database connection while its endpoint hangs: without a cap, as many hanging
    endpoints as the operator added would take as many Postgres connections (which sign-ins need)."""
    tuned = msgspec.structs.replace(hook_settings, webhooks_concurrency=2, webhooks_timeout_seconds=60.0)
    assert tuned.database_url
    hanging = [Receiver() for _ in range(4)]
    for receiver in hanging:
        receiver.default = "hang"
        await add_endpoint(tuned, receiver)
    await emit(tuned, await new_user(tuned, new_phone()))
    deliverer = WebhookDeliverer(tuned.database_url, tuned)
    deliverer.start()
    try:
        await eventually(lambda: sum(r.in_flight for r in hanging) == 2, 10, "two endpoints to hold a request")
        for _ in range(25):  # a few dozen polls (20 ms each), any of which could start another round
            await asyncio.sleep(0.04)
            assert sum(r.in_flight for r in hanging) == 2
        assert deliverer.engine.pool.checkedout() <= 2 + 2  # two rounds' connections (and the polls')
    finally:
        for receiver in hanging:
            receiver.release()
        await deliverer.stop()
        for receiver in hanging:
            receiver.close()
