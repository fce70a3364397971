"""Postgres round trips of a failed sign-in before its hash, counted on the wire.

The app talks to Postgres through a TCP relay in this test that counts round trips: a client's
``Sync`` (extended protocol) or ``Query`` (simple protocol) message each ends one, and Postgres
answers each with one ``ReadyForQuery``. The count is read when the hash starts (the app's own
hasher, wrapped), so it holds whatever the sign-in does after it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from app.asgi import create_app, served
from app.core.settings import Settings
from tests.conftest import from_loopback
from tests.helpers import STRONG_PASSWORD, new_phone, registered

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class RoundTripRelay:
    """A relay to Postgres on its own thread and event loop, counting the round trips of every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.round_trips = 0
        self.loop = asyncio.new_event_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RoundTripRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._relay, sock=self._listener))
        self.loop.run_forever()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(
            self._client_to_server(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
            return_exceptions=True,
        )

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay the client's messages one by one, counting those that end a round trip."""
        try:
            first = await reader.readexactly(8)
            if first == SSL_REQUEST:  # answered by one byte, then the startup message follows
                writer.write(first)
                first = await reader.readexactly(8)
            (length,) = struct.unpack("!i", first[:4])
            writer.write(first + await reader.readexactly(length - 8))  # the startup message: no type byte
            while True:
                head = await reader.readexactly(5)
                (length,) = struct.unpack("!i", head[1:])
                if head[:1] in (b"S", b"Q"):
                    self.round_trips += 1
                writer.write(head + await reader.readexactly(length - 4))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
def relay(settings: Settings) -> Iterator[RoundTripRelay]:
    url = make_url(settings.database_url or "")
    with RoundTripRelay(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


async def test_a_failed_sign_in_makes_one_round_trip_before_its_hash(settings, relay):
    url = make_url(settings.database_url or "").set(host="127.0.0.1", port=relay.port)
    quiet = msgspec.structs.replace(
        settings,
        database_url=url.render_as_string(hide_password=False),
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
