"""Postgres round trips of a failed sign-in before its hash, counted on the wire.

The app talks to Postgres through a relay that counts round trips (``bench/wire.py``: a client's
``Sync`` or ``Query`` message each ends one). The count is read when the hash starts (the app's own
hasher, wrapped), so it holds whatever the sign-in does after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app, served
from app.core.settings import Settings
from bench.wire import RoundTripRelay
from tests.conftest import from_loopback
from tests.helpers import STRONG_PASSWORD, new_phone, registered


@pytest.fixture
def relay(settings: Settings) -> Iterator[RoundTripRelay]:
    with RoundTripRelay.to(settings.database_url or "") as running:
        yield running


async def test_a_failed_sign_in_makes_one_round_trip_before_its_hash(settings, relay):
    quiet = msgspec.structs.replace(
        settings,
        database_url=relay.url(settings.database_url or ""),
        audit_writer_enabled=False,  # nothing else of the app's talks to Postgres meanwhile
        account_events_relay_enabled=False,
        signing_keys_refresh_seconds=3600,
    )
    app = create_app(quiet)
    async with AsyncTestClient(app=from_loopback(served(app)), raise_server_exceptions=False) as client:
        phone = new_phone()
        await registered(client, phone_number=phone)
        hasher = app.state.hasher
        at_hash: list[int] = []
        verify = hasher.verify_password

        async def counted_verify(*args: Any, **kwargs: Any) -> Any:
            at_hash.append(relay.round_trips)
            return await verify(*args, **kwargs)

        hasher.verify_password = counted_verify
        before: list[int] = []
        for n in range(4):  # the first one prepares its statement on the connection (a second round trip)
            before.append(relay.round_trips)
            wrong = {"phone_number": phone, "password": "Wrong-Password-77"}
            answer = await client.post("/api/auth/login", json=wrong, headers={"X-Forwarded-For": f"192.0.2.{n}"})
            assert answer.status_code == 401, answer.text
        unknown = {"phone_number": new_phone(), "password": STRONG_PASSWORD}
        before.append(relay.round_trips)
        assert (await client.post("/api/auth/login", json=unknown)).status_code == 401

    spent = [hashed - started for started, hashed in zip(before, at_hash, strict=True)]
    assert spent[1:] == [1, 1, 1, 1], spent  # an unknown number too: the same one lookup
