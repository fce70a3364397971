"""A relay to Postgres that counts round trips on the wire, for the benchmarks and the tests.

A client's ``Sync`` (extended protocol) or ``Query`` (simple protocol) message each ends one round
trip: Postgres answers each with one ``ReadyForQuery``. Whatever the driver or the ORM does (a
pre-ping, a BEGIN, a prepare), it shows up here. Loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class RoundTripRelay:
    """A relay to Postgres on its own thread and event loop, counting the round trips of every connection.

    ``host`` is an address, or (as libpq's ``host``) the directory of a Unix socket, the embedded
    server's only way in.
    """

    @classmethod
    def to(cls, database_url: str) -> RoundTripRelay:
        """A relay to the server of ``database_url`` (TCP, or its Unix socket: ``?host=/dir``)."""
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        host = socket_dir if isinstance(socket_dir, str) else url.host
        return cls(host or "127.0.0.1", url.port or 5432)

    def url(self, database_url: str) -> str:
        """``database_url`` through this relay."""
        url = make_url(database_url).difference_update_query(["host"])
        return url.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

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
        host, port = self.target
        if host.startswith("/"):
            path = str(Path(host) / f".s.PGSQL.{port}")
            server_reader, server_writer = await asyncio.open_unix_connection(path)
        else:
            server_reader, server_writer = await asyncio.open_connection(host, port)
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
