"""Attack 5: the limiter's hand-written transport (app/ratelimit/transport.py ``PipelineTransport``):
a batch of EVALSHA packed by hiredis, written on one pooled redis-py connection, replies read in order.

A reply left on a pooled connection would be read by the next batch: one client would get another
client's decision. Every test here runs on a Redis of its own (flushed, killed, proxied), and checks
each reply against the call it answers (the reserve script returns the member it was sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from app.asgi import create_app, served
from app.core.embedded import EmbeddedRedis
from app.core.errors import LimiterUnavailable
from app.core.redis import create_redis
from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter
from tests.asgi import lifespan_running
from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, e164, new_phone

WRONG = "Wrong-Password-77"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    yield server
    server.stop()


class ReplyGate:
    """A TCP proxy in front of Redis whose replies can be held, let through in part, or cut: the
    command has run in Redis, the client has not (all) of its reply. Only replies on connections that
    have sent script calls are held."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = False
        self.cut_next_reply = False
        self.held: list[bytearray] = []  # per client connection, in the order they were made
        self.replied = asyncio.Event()
        self.cut = asyncio.Event()
        self._client_writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._client_writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self, count: int | None = None, connection: int = -1) -> None:
        """Let ``count`` held bytes (all by default) of a client connection (the newest by default) through."""
        held = self.held[connection]
        count = len(held) if count is None else count
        data = bytes(held[:count])
        del held[:count]
        writer = self._client_writers[connection]
        if not writer.transport.is_closing():
            writer.write(data)

    def release_all(self) -> None:
        for index in range(len(self.held)):
            self.release(None, index)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._client_writers.append(writer)
        held = bytearray()
        self.held.append(held)
        scripted = [False]  # this connection has sent EVALSHA (its connect handshake is never held)

        async def to_redis() -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    scripted[0] = scripted[0] or b"EVALSHA" in data
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            with contextlib.suppress(Exception):
                while data := await up_reader.read(65536):
                    if self.cut_next_reply:
                        self.cut_next_reply = False
                        writer.transport.abort()  # the command ran; its reply never arrives
                        up_writer.close()
                        self.cut.set()
                        return
                    if self.hold and scripted[0]:
                        held.extend(data)
                        self.replied.set()
                        continue
                    writer.write(data)
                    await writer.drain()
            writer.close()

        for coroutine in (to_redis(), to_client()):
            task = asyncio.create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def reply_gate(server: EmbeddedRedis) -> AsyncIterator[ReplyGate]:
    gate = ReplyGate(int(server.url.rsplit(":", 1)[1].split("/")[0]))
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()


def members_match(calls: list[Any], replies: list[Any]) -> list[tuple[str, Any]]:
    """Reserve replies that are not their own call's: (member sent, reply got)."""
    wrong = []
    for call, reply in zip(calls, replies, strict=True):
        sent = str(call.args[4])
        got = reply[2].decode() if isinstance(reply, list) and isinstance(reply[2], bytes) else reply
        if not isinstance(reply, list) or not int(reply[0]) or got != sent:
            wrong.append((sent, reply))
    return wrong


# ---- a batch cancelled mid-read leaves nothing for the next caller -------------------------------------


async def test_a_batch_cancelled_half_read_does_not_hand_its_replies_to_the_next_batch(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    async with reply_gate(private_redis) as gate:
        redis = create_redis(msgspec.structs.replace(settings, redis_url=gate.url))
        try:
            limiter = LoginLimiter(redis, settings)
            transport = limiter._transport
            assert type(transport).__name__ == "PipelineTransport"
            assert (await limiter.reserve_client("198.51.100.1")).allowed  # connected, script loaded

            for round_ in range(3):
                connections = len(gate.held)
                first = [limiter.reserve_call("login", f"198.51.100.{10 + round_}-{n}") for n in range(6)]
                gate.hold = True
                gate.replied.clear()
                running = asyncio.create_task(transport.run(first))
                await asyncio.wait_for(gate.replied.wait(), 5)
                await asyncio.sleep(0.05)  # every reply of the batch is held by now
                gate.release(len(gate.held[-1]) // 3)  # a reply or two reaches the client, the rest does not
                await asyncio.sleep(0.05)
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running

                # The next batch, with the first one's remaining replies still held: were it sent on the
                # same connection, those would be delivered first and read as its own.
                gate.replied.clear()
                second = [limiter.reserve_call("login", f"203.0.113.{round_}-{n}") for n in range(6)]
                following = asyncio.create_task(transport.run(second))
                await asyncio.wait_for(gate.replied.wait(), 5)
                await asyncio.sleep(0.05)
                gate.hold = False
                gate.release_all()  # in each connection's order: the first batch's leftovers first
                replies = await asyncio.wait_for(following, 5)
                assert members_match(second, replies) == [], round_
                assert len(gate.held) == connections + 1  # the cancelled batch's connection was not reused
                # And through the limiter's own path (coalescer, decision), a fresh budget's first slot.
                decision = await limiter.reserve_client(f"192.0.2.{round_}")
                assert decision.allowed and decision.remaining == settings.rate_limit_login_failures - 1
        finally:
            await redis.aclose()


async def test_callers_hanging_up_while_their_batch_is_in_flight_leave_later_decisions_right(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    """The request tasks awaiting the limiter are cancelled (the clients hung up) while the batch is in
    Redis; the batch itself finishes. Later callers on the same pool get their own decisions."""
    async with reply_gate(private_redis) as gate:
        redis = create_redis(msgspec.structs.replace(settings, redis_url=gate.url))
        try:
            limiter = LoginLimiter(redis, settings)
            await limiter.reserve_client("198.51.100.1")
            gate.hold = True
            gate.replied.clear()
            doomed = [asyncio.create_task(limiter.reserve_client("198.51.100.66")) for _ in range(8)]
            await asyncio.wait_for(gate.replied.wait(), 5)
            gate.release(len(gate.held[-1]) // 2)
            await asyncio.sleep(0.02)
            for task in doomed:
                task.cancel()
            await asyncio.gather(*doomed, return_exceptions=True)
            gate.hold = False
            gate.release_all()
            await asyncio.sleep(0.05)

            limit = settings.rate_limit_login_failures
            for client in ("203.0.113.7", "203.0.113.8"):
                decisions = [await limiter.reserve_client(client) for _ in range(limit + 2)]
                assert [d.allowed for d in decisions] == [True] * limit + [False, False], client
                assert [d.remaining for d in decisions[:limit]] == list(range(limit - 1, -1, -1))
            # The hung-up callers' reservations were taken (the batch ran) and lapse by themselves.
            left = await limiter.reserve_client("198.51.100.66")
            assert not left.allowed
        finally:
            await redis.aclose()


# ---- SCRIPT FLUSH between and during batches ---------------------------------------------------------


async def test_script_flush_applies_no_call_twice_and_loses_no_reservation(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    """Even rounds: SCRIPT FLUSH just before a batch of 30 reserves (every call meets NOSCRIPT, the
    script is loaded, every call re-sent once): exactly the budget is reserved, each once. Odd rounds:
    flushes keep coming during the batches (a call meeting NOSCRIPT twice fails closed): whatever was
    answered "allowed" is in Redis exactly once, nothing more. Then the settles, with their audit
    events, each appended once."""
    redis = create_redis(msgspec.structs.replace(settings, redis_url=private_redis.url))
    flusher_redis = Redis.from_url(private_redis.url)
    limit = settings.rate_limit_login_failures
    storm = asyncio.Event()
    stop = asyncio.Event()
    flushes = 0

    async def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            if storm.is_set():
                await flusher_redis.script_flush()
                flushes += 1
            await asyncio.sleep(0.002)

    try:
        limiter = LoginLimiter(redis, settings)
        flushing = asyncio.create_task(flusher())
        unavailable = 0
        for round_ in range(12):
            client = f"198.51.100.{round_}"
            if round_ % 2 == 0:
                storm.clear()
                await flusher_redis.script_flush()
            else:
                storm.set()
            results = await asyncio.gather(*(limiter.reserve_client(client) for _ in range(30)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(e, LimiterUnavailable) for e in errors), errors
            unavailable += len(errors)
            allowed = [r for r in results if not isinstance(r, BaseException) and r.allowed]
            held = await flusher_redis.zcard(limiter.budget_key("login", client))
            # Every reservation answered is in Redis once, and nothing else is.
            assert held == len(allowed) <= limit, (round_, held, len(allowed), len(errors))
            if round_ % 2 == 0:
                assert errors == [] and len(allowed) == limit, (round_, errors)
            # Settles with their audit event, after another flush: each lands once.
            if round_ % 2 == 0:
                await flusher_redis.script_flush()
            stream = limiter.keys.audit_stream(limiter.keys.shard_of(client))
            before = await flusher_redis.xlen(stream)
            settled = await asyncio.gather(
                *(limiter.settle(d.reservation, "failure", b'{"n":1}') for d in allowed if d.reservation),
                return_exceptions=True,
            )
            ok = [s for s in settled if s is True]
            assert all(s is True or isinstance(s, LimiterUnavailable) for s in settled), settled
            assert await flusher_redis.xlen(stream) - before == len(ok)
            if round_ % 2 == 0:
                assert len(ok) == limit
        stop.set()
        await flushing
        assert flushes > 5
        print(f"flushes={flushes} unavailable={unavailable}")
    finally:
        stop.set()
        await redis.aclose()
        await flusher_redis.aclose()


# ---- the whole service on one Redis: exactness, audit, kills ---------------------------------------------


@contextlib.asynccontextmanager
async def clients_of(app: Any, *addresses: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One in-loop HTTP client per peer address, all on ``app`` (started once)."""
    async with lifespan_running(app), contextlib.AsyncExitStack() as stack:
        asgi = served(app)
        clients = []
        for address in addresses:
            transport = httpx.ASGITransport(app=asgi, client=(address, 50000))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)
                )
            )
        yield clients


async def audit_rows(settings: Settings, phone: str, expected: int, within: float = 20.0) -> list[Any]:
    conn = await asyncpg.connect(plain_dsn(settings))
    try:
        deadline = time.monotonic() + within
        while True:
            rows = await conn.fetch(
                "SELECT event_id, reason, request_id FROM login_attempts WHERE phone_number = $1", phone
            )
            if len(rows) >= expected or time.monotonic() > deadline:
                await asyncio.sleep(0.3)  # and nothing more arrives after
                return list(
                    await conn.fetch(
                        "SELECT event_id, reason, request_id FROM login_attempts WHERE phone_number = $1", phone
                    )
                )
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_parallel_wrong_passwords_get_exactly_the_budget_and_one_audit_row_each(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    settings = msgspec.structs.replace(settings, redis_url=private_redis.url)
    app = create_app(settings)
    phone = new_phone()
    attempts = 80
    async with clients_of(app, "198.51.100.23") as (http,):
        body = {"phone_number": phone, "password": WRONG}
        answers = await asyncio.gather(
            *(http.post("/api/auth/login", json=body, headers={"x-request-id": f"a5-{n}"}) for n in range(attempts))
        )
        statuses = Counter(a.status_code for a in answers)
        limit = settings.rate_limit_login_failures
        assert statuses == {401: limit, 429: attempts - limit}, statuses
        rows = await audit_rows(settings, e164(phone), attempts)
    per_request = Counter(row["request_id"] for row in rows)
    assert len(rows) == attempts and set(per_request.values()) == {1}, per_request.most_common(3)
    assert Counter(row["reason"] for row in rows) == {"unknown_account": limit, "rate_limited": attempts - limit}


async def test_client_kill_storm_fails_closed_and_the_limiter_recovers(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    """CLIENT KILL of every normal connection, again and again, while sign-ins arrive: answers are
    401/429/503 (never 500); no more wrong passwords are verified than the budget; an exhausted client's
    right password never gets a 200; and once the kills stop, sign-ins work again."""
    settings = msgspec.structs.replace(settings, redis_url=private_redis.url, register_limit=1000)
    app = create_app(settings)
    killer_redis = Redis.from_url(private_redis.url)
    limit = settings.rate_limit_login_failures
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            with contextlib.suppress(Exception):
                kills += int(await killer_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            await asyncio.sleep(0.004)

    try:
        async with clients_of(app, "198.51.100.31", "198.51.100.32", "198.51.100.33") as (guesser, spent, fresh):
            owner_phone = new_phone()
            register = {
                "name": "Kill Test",
                "phone_number": owner_phone,
                "password": STRONG_PASSWORD,
                "user_type": "parent",
            }
            assert (await fresh.post("/api/auth/register", json=register)).status_code == 201
            # ``spent`` uses its whole budget on wrong passwords first.
            for _ in range(limit):
                assert (
                    await spent.post("/api/auth/login", json={"phone_number": new_phone(), "password": WRONG})
                ).status_code == 401

            killing = asyncio.create_task(killer())
            wrong = {"phone_number": new_phone(), "password": WRONG}
            right = {"phone_number": owner_phone, "password": STRONG_PASSWORD}
            answers = []
            for _ in range(4):  # waves, so kills land before, during and between batches
                answers += await asyncio.gather(
                    *(guesser.post("/api/auth/login", json=wrong) for _ in range(15)),
                    *(spent.post("/api/auth/login", json=right) for _ in range(8)),
                )
                await asyncio.sleep(0.01)
            stop.set()
            await killing

            guesses, exhausted = [], []
            for n, answer in enumerate(answers):
                (guesses if n % 23 < 15 else exhausted).append(answer)
            bad = [(a.status_code, a.text[:150]) for a in answers if a.status_code not in (401, 429, 503)]
            assert bad == [], bad
            assert not [a for a in exhausted if a.status_code == 200]
            assert sum(a.status_code == 401 for a in guesses) <= limit
            assert all("retry-after" in a.headers for a in answers if a.status_code in (429, 503))
            print(
                "kills",
                kills,
                "guesses",
                Counter(a.status_code for a in guesses),
                "exhausted",
                Counter(a.status_code for a in exhausted),
            )
            assert kills > 0

            # Afterwards: the limiter works again (a connection broken by the last kill may cost one 503).
            codes = []
            for _ in range(3):
                answer = await fresh.post("/api/auth/login", json=right)
                codes.append(answer.status_code)
                if answer.status_code == 200:
                    break
            assert codes[-1] == 200 and set(codes[:-1]) <= {503}, codes
            again = await fresh.post("/api/auth/login", json=right)
            assert again.status_code == 200, again.text
    finally:
        stop.set()
        await killer_redis.aclose()


# ---- a reply lost after the script ran --------------------------------------------------------------------


async def test_a_refusal_whose_reply_is_lost_is_audited_once(private_redis: EmbeddedRedis, settings: Settings) -> None:
    """The client's budget is spent; its next sign-in's reserve call runs in Redis (refused, and the
    refusal event appended to the audit stream by the same script), but the connection is cut before
    the reply arrives. The gate answers 503 and stores a ``limiter_unavailable`` event in Postgres."""
    limit = settings.rate_limit_login_failures
    phone = new_phone()
    async with reply_gate(private_redis) as gate:
        # No writer here: its blocking reads would go through the proxy too (drained below instead).
        proxied = msgspec.structs.replace(settings, redis_url=gate.url, audit_writer_enabled=False)
        async with clients_of(create_app(proxied), "198.51.100.44") as (http,):
            body = {"phone_number": phone, "password": WRONG}
            for _ in range(limit):
                assert (await http.post("/api/auth/login", json=body)).status_code == 401
            gate.cut_next_reply = True
            cut = await http.post("/api/auth/login", json=body, headers={"x-request-id": "a5-lost-reply"})
            assert gate.cut.is_set()
            assert cut.status_code == 503, cut.text
    # A writer drains the streams into Postgres.
    direct = msgspec.structs.replace(settings, redis_url=private_redis.url)
    async with lifespan_running(create_app(direct)):
        rows = await audit_rows(settings, e164(phone), limit + 2, within=5)
    for_the_cut = [row["reason"] for row in rows if row["request_id"] == "a5-lost-reply"]
    assert for_the_cut in (["rate_limited"], ["limiter_unavailable"]), for_the_cut
