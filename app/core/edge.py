"""The edge of each process: uvicorn's HTTP protocols with a whole-request read deadline and connection caps.

uvicorn times out only an idle keep-alive connection. A client that opens a connection and sends
nothing, or a header line every few seconds, or a body one byte at a time, is kept for ever, and a
few thousand of them take every file descriptor (slowloris). Here every request must have arrived
whole (headers and body) within ``REQUEST_READ_TIMEOUT_SECONDS`` of its first byte (of the
connection, for the first one), or the connection is answered 408 and closed (one sweep per event
loop finds those past their deadline, every quarter of the timeout and at least every second); a process keeps at
most ``MAX_CONNECTIONS`` connections (a request at the cap, or past that many in flight, is answered
503 ``server_busy`` in JSON with Retry-After), and ``CONNECTIONS_PER_CLIENT`` of one address when set
(only where the process sees the client's own address: behind a proxy every client shares the proxy's).

``serve`` names these classes as uvicorn's ``http`` implementation; their limits come from the
settings it passes to its workers in the environment (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
TIMED_OUT_BODY = b'{"message":"The request took too long to arrive.","code":"request_timeout"}'
OVER_CAPACITY_BODY = b'{"message":"The server is at its connection limit. Try again in a moment.","code":"server_busy"}'
OVER_CAPACITY_RETRY_AFTER = b"2"


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    read_timeout_seconds: float
    max_connections: int
    connections_per_client: int  # 0: no cap per address


@functools.cache
def edge_limits() -> EdgeLimits:
    """Read once per process, from the settings ``serve`` hands its workers."""
    from app.core.settings import Settings  # the settings module reads nothing at import time either

    settings = Settings.from_env()
    return EdgeLimits(settings.request_read_timeout_seconds, settings.max_connections, settings.connections_per_client)


_per_client: dict[str, int] = {}  # open connections per client address, in this process


class CoalescingTransport:
    """The connection's transport, with the writes of one turn of the event loop sent as one.

    uvicorn writes a response's head and its body separately, two ``send`` system calls for nearly
    every response; on this kind of host those took a third of a refused sign-in (docs/benchmarks.md).
    Writes are gathered and handed on once the task that made them yields; anything that ends the
    connection hands on what was gathered first.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RequestDeadline:
    """Mixed into uvicorn's protocols, before them; uses only what both have (``transport``,
    ``client``, ``connections``, ``tasks``, ``cycle`` and its ``more_body``, ``app`` and
    ``limit_concurrency``)."""

    transport: asyncio.Transport
    client: tuple[str, int] | None
    connections: set[Any]
    cycle: Any
    limits: EdgeLimits | None = None  # None: from the environment (edge_limits)
    tasks: set[asyncio.Task[None]]
    limit_concurrency: int | None
    app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn answers a request past ``limit_concurrency`` itself, in plain text: the same check
        # is made here instead, answered in JSON like every other error of the service.
        self._concurrency_limit, self.limit_concurrency = self.limit_concurrency, None
        self._app, self.app = self.app, self._serve_within_capacity

    async def _serve_within_capacity(self, scope: Any, receive: Any, send: Any) -> None:
        limit = self._concurrency_limit
        # uvicorn's own test, made before this request's task existed (it is counted in ``tasks`` now).
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) > limit):
            await over_capacity(send)
            return
        await self._app(scope, receive, send)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport)))  # type: ignore[misc]
        limits = self.limits or edge_limits()
        self._read_timeout = limits.read_timeout_seconds
        self._deadline: float | None = None  # the loop time by which the request in reading must be whole
        self._cycle_at_arm: Any = None
        self._counted: str | None = None
        host = self.client[0] if self.client else None
        if len(self.connections) > limits.max_connections:
            self.transport.abort()
            return
        if host is not None and limits.connections_per_client:
            if _per_client.get(host, 0) >= limits.connections_per_client:
                self.transport.abort()
                return
            _per_client[host] = _per_client.get(host, 0) + 1
            self._counted = host
        self._sweeper = DeadlineSweeper.of(asyncio.get_running_loop(), self._read_timeout)
        self._sweeper.watched.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        sweeper = getattr(self, "_sweeper", None)
        if sweeper is not None:
            sweeper.watched.discard(self)
        if self._counted is not None:
            left = _per_client.get(self._counted, 1) - 1
            if left > 0:
                _per_client[self._counted] = left
            else:
                _per_client.pop(self._counted, None)
            self._counted = None
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not None and self.cycle is not self._cycle_at_arm and not self.cycle.more_body:
            self._disarm()  # read whole: from here on it is the application's time

    def _arm(self) -> None:
        self._cycle_at_arm = self.cycle
        self._deadline = self._sweeper.loop.time() + self._read_timeout

    def _disarm(self) -> None:
        self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is self._cycle_at_arm:  # its headers never completed: nothing was answered yet
            self.transport.write(TIMED_OUT + b"content-length: %d\r\n\r\n" % len(TIMED_OUT_BODY) + TIMED_OUT_BODY)
        self.transport.close()


class DeadlineSweeper:
    """One timer per event loop for every connection's read deadline, instead of one per request.

    A request arms its deadline by writing a time and disarms it by clearing it; every ``period``
    (a quarter of the timeout, at most a second) the sweeper ends the connections past theirs. A
    deadline is so kept within a quarter of itself late, and a request costs no timer of the loop's
    (a refused sign-in armed and cancelled one each: docs/benchmarks.md).
    """

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineSweeper] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.period = period
        self.watched: set[RequestDeadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, timeout: float) -> DeadlineSweeper:
        """The loop's sweeper, its timer running."""
        sweeper = cls._of_loop.get(loop)
        if sweeper is None:
            sweeper = cls._of_loop[loop] = cls(loop, min(1.0, timeout / 4))
        if sweeper._timer is None:
            sweeper._timer = loop.call_later(sweeper.period, sweeper._sweep)
        return sweeper

    def _sweep(self) -> None:
        now = self.loop.time()
        for protocol in [p for p in self.watched if p._deadline is not None and p._deadline <= now]:
            protocol._timed_out()
        # Stops with the last connection; the next one starts it again.
        self._timer = self.loop.call_later(self.period, self._sweep) if self.watched else None


async def over_capacity(send: Any) -> None:
    """503 ``server_busy`` with Retry-After, and the connection closed (uvicorn's own is plain text)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(OVER_CAPACITY_BODY)).encode()),
        (b"retry-after", OVER_CAPACITY_RETRY_AFTER),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": OVER_CAPACITY_BODY, "more_body": False})


class GuardedH11Protocol(RequestDeadline, H11Protocol):
    pass


class GuardedHttpToolsProtocol(RequestDeadline, HttpToolsProtocol):
    pass


def protocol_path() -> str:
    """The fastest guarded protocol installed, as uvicorn's ``http`` option takes it."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return f"{__name__}:GuardedH11Protocol"
    return f"{__name__}:GuardedHttpToolsProtocol"


def exit_with_parent(master_pid: int) -> None:
    """Ask Linux to end this worker when its parent dies (PR_SET_PDEATHSIG), and end it now if the
    parent is already gone: a worker left running after its master was killed would keep the port
    and serve without supervision. Elsewhere than Linux a thread watches the parent instead."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        _watch_parent(master_pid)
    if os.getppid() != master_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_parent(master_pid: int) -> None:
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == master_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
