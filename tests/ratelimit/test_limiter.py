"""The login limiter against a real Redis: exact budgets, reservations, PIN lock, audit, failure modes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import BlockingConnectionPool, Redis
from redis.crc import key_slot

from app.audit.pipeline.events import STREAM_FIELD
from app.core.embedded import EmbeddedRedis, free_port
from app.core.errors import LimiterUnavailable
from app.core.redis import create_redis
from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter, ScriptCall

START_MS = 1_700_000_000_000
PHONE = "+250788123456"


class ManualClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, ms: int = START_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, seconds: float = 0, ms: int = 0) -> None:
        self.ms += round(seconds * 1000) + ms


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    # A blocking pool smaller than the bursts below: calls queue for a connection instead of failing.
    client = Redis(connection_pool=BlockingConnectionPool.from_url(settings.redis_url, max_connections=32, timeout=5))
    yield client
    keys = [key async for key in client.scan_iter(match=f"{settings.redis_key_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limiter(redis: Redis, settings: Settings, clock: ManualClock) -> LoginLimiter:
    return LoginLimiter(redis, settings, clock=clock)


async def stream_entries(redis: Redis, stream: str) -> list[Any]:
    entries: Any = await redis.xrange(stream)
    return [fields for _, fields in entries]


async def all_streams(redis: Redis, limiter: LoginLimiter) -> dict[str, int]:
    lengths = {stream: await redis.xlen(stream) for stream in limiter.keys.audit_streams()}
    return {stream: length for stream, length in lengths.items() if length}


# ---- the sliding window against a brute-force model ------------------------------------------


class WindowModel:
    """The client budget as plain Python: member -> ("f", failed at) or ("r", lapses at)."""

    def __init__(self, limit: int, window_ms: int, hold_ms: int) -> None:
        self.limit, self.window_ms, self.hold_ms = limit, window_ms, hold_ms
        self.entries: dict[str, tuple[str, int]] = {}

    def reserve(self, now: int) -> tuple[bool, int, int]:
        self.entries = {
            member: (kind, at)
            for member, (kind, at) in self.entries.items()
            if (kind == "f" and at > now - self.window_ms) or (kind == "r" and at > now)
        }
        count = len(self.entries)
        if count < self.limit:
            return True, self.limit - count - 1, 0
        failures = sorted(at for kind, at in self.entries.values() if kind == "f")
        need = count - self.limit + 1
        # A reservation is taken to settle as a failure now: its slot frees a window from now.
        free_at = failures[need - 1] + self.window_ms if len(failures) >= need else now + self.window_ms
        return False, 0, max(1, -(-(free_at - now) // 1000))

    def add_reservation(self, member: str, now: int) -> None:
        self.entries[member] = ("r", now + self.hold_ms)

    def settle(self, member: str, outcome: str, now: int) -> None:
        if outcome == "failure":
            self.entries[member] = ("f", now)
        else:
            self.entries.pop(member, None)

    def redis_view(self) -> dict[bytes, float]:
        """The sorted set the limiter should hold: failures scored by time, reservations by -lapse."""
        return {m.encode(): float(at if kind == "f" else -at) for m, (kind, at) in self.entries.items()}


_step = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 999, 1000, 1001, 4999, 5000, 59_999, 60_000])),
    st.tuples(st.just("advance"), st.integers(0, 70_000)),
    st.tuples(st.just("reserve"), st.just(0)),
    st.tuples(st.just("reserve"), st.just(0)),
    st.tuples(st.sampled_from(["success", "failure", "failure", "release"]), st.integers(0, 1000)),
    st.tuples(st.just("lapse"), st.just(0)),
)


def test_sliding_window_matches_reference_model(settings: Settings) -> None:
    base = msgspec.structs.replace(
        settings, rate_limit_login_failures=3, rate_limit_login_window_seconds=60, rate_limit_reservation_seconds=5
    )
    examples = itertools.count()

    async def run(redis: Redis, steps: list[tuple[str, int]]) -> None:
        example_settings = msgspec.structs.replace(base, redis_key_prefix=f"{base.redis_key_prefix}{next(examples)}:")
        clock = ManualClock()
        limiter = LoginLimiter(redis, example_settings, clock=clock)
        model = WindowModel(3, 60_000, 5_000)
        key = limiter.budget_key("login", "198.51.100.7")
        issued = []
        for op, value in steps:
            if op == "advance":
                clock.advance(ms=value)
            elif op == "lapse":
                clock.advance(ms=model.hold_ms)
            elif op == "reserve":
                decision = await limiter.reserve_client("198.51.100.7")
                expected = model.reserve(clock.ms)
                assert (decision.allowed, decision.remaining, decision.retry_after) == expected
                if decision.reservation is not None:
                    issued.append(decision.reservation)
                    model.add_reservation(decision.reservation.member, clock.ms)
            elif issued:
                reservation = issued[value % len(issued)]
                await limiter.settle(reservation, op)  # type: ignore[arg-type]
                model.settle(reservation.member, op, clock.ms)
            stored: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
            assert dict(stored) == model.redis_view()
            if model.entries:
                assert 0 < await redis.pttl(key) <= 65_000

    with asyncio.Runner() as runner:
        assert settings.redis_url
        redis = Redis.from_url(settings.redis_url)

        @hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(steps=st.lists(_step, min_size=1, max_size=40))
        def check(steps: list[tuple[str, int]]) -> None:
            runner.run(run(redis, steps))

        try:
            check()
        finally:
            runner.run(_delete_prefix(redis, base.redis_key_prefix))
            runner.run(redis.aclose())


async def _delete_prefix(redis: Redis, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)


# ---- exactness under concurrency -----------------------------------------------------------


async def test_200_concurrent_reserves_allow_exactly_the_limit(limiter: LoginLimiter, settings: Settings) -> None:
    decisions = await asyncio.gather(*(limiter.reserve_client("198.51.100.7") for _ in range(200)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == settings.rate_limit_login_failures
    assert sorted(d.remaining for d in allowed) == list(range(settings.rate_limit_login_failures))
    refused = [d for d in decisions if not d.allowed]
    # Only reservations hold the budget: each is expected to settle as a failure, freeing its slot a window on.
    assert {d.retry_after for d in refused} == {settings.rate_limit_login_window_seconds}
    assert {d.reason for d in refused} == {"rate_limited"}

    await asyncio.gather(*(limiter.settle(d.reservation, "failure") for d in allowed if d.reservation))
    after = await limiter.reserve_client("198.51.100.7")
    assert not after.allowed
    assert after.retry_after == settings.rate_limit_login_window_seconds
    assert (await limiter.reserve_client("198.51.100.8")).allowed  # another client is not affected


async def test_releasing_reservations_lets_others_through(limiter: LoginLimiter, settings: Settings) -> None:
    held = [await limiter.reserve_client("198.51.100.7") for _ in range(settings.rate_limit_login_failures)]
    assert not (await limiter.reserve_client("198.51.100.7")).allowed
    for decision in held[:2]:
        assert decision.reservation
        await limiter.settle(decision.reservation, "release")
    retries = await asyncio.gather(*(limiter.reserve_client("198.51.100.7") for _ in range(50)))
    assert sum(d.allowed for d in retries) == 2


async def test_successes_give_the_slot_back(limiter: LoginLimiter) -> None:
    for _ in range(20):
        decision = await limiter.reserve_client("198.51.100.7")
        assert decision.allowed and decision.remaining == 4 and decision.reservation
        await limiter.settle(decision.reservation, "success")


# ---- time ------------------------------------------------------------------------------------


async def fail_client(limiter: LoginLimiter, client_key: str, times: int) -> None:
    for _ in range(times):
        decision = await limiter.reserve_client(client_key)
        assert decision.allowed and decision.reservation
        await limiter.settle(decision.reservation, "failure")


async def test_failures_leave_the_window(limiter: LoginLimiter, clock: ManualClock) -> None:
    await fail_client(limiter, "198.51.100.7", 5)
    clock.advance(899.999)
    refused = await limiter.reserve_client("198.51.100.7")
    assert not refused.allowed and refused.retry_after == 1
    clock.advance(ms=1)
    assert (await limiter.reserve_client("198.51.100.7")).remaining == 4


async def test_refused_attempts_do_not_extend_the_window(limiter: LoginLimiter, clock: ManualClock) -> None:
    await fail_client(limiter, "198.51.100.7", 5)
    clock.advance(100)
    for _ in range(30):
        assert (await limiter.reserve_client("198.51.100.7")).retry_after == 800
    clock.advance(400.5)
    assert (await limiter.reserve_client("198.51.100.7")).retry_after == 400  # 399.5 s, rounded up
    clock.advance(399.5)
    assert (await limiter.reserve_client("198.51.100.7")).allowed


async def test_sliding_not_fixed_window(limiter: LoginLimiter, clock: ManualClock) -> None:
    for _ in range(5):
        await fail_client(limiter, "198.51.100.7", 1)
        clock.advance(100)
    # oldest failure at t=0 leaves at 900; now t=500
    refused = await limiter.reserve_client("198.51.100.7")
    assert refused.retry_after == 400
    clock.advance(400)
    decision = await limiter.reserve_client("198.51.100.7")
    assert decision.allowed and decision.remaining == 0


async def test_unsettled_reservation_frees_its_slot_after_the_hold(
    limiter: LoginLimiter, clock: ManualClock, settings: Settings
) -> None:
    for _ in range(5):
        assert (await limiter.reserve_client("198.51.100.7")).allowed  # requests that then died
    refused = await limiter.reserve_client("198.51.100.7")
    # Retry-After takes them to settle as failures (the attack case); a died request's slot frees sooner.
    assert refused.retry_after == settings.rate_limit_login_window_seconds
    clock.advance(settings.rate_limit_reservation_seconds - 0.001)
    assert not (await limiter.reserve_client("198.51.100.7")).allowed
    clock.advance(ms=1)
    assert (await limiter.reserve_client("198.51.100.7")).remaining == 4


async def test_late_failure_settle_still_counts(limiter: LoginLimiter, clock: ManualClock) -> None:
    slow = await limiter.reserve_client("198.51.100.7")
    assert slow.reservation
    clock.advance(31)  # the reservation lapsed; its verification finished late anyway
    await fail_client(limiter, "198.51.100.7", 4)
    await limiter.settle(slow.reservation, "failure")
    refused = await limiter.reserve_client("198.51.100.7")
    assert not refused.allowed and refused.retry_after == 900


async def test_overfull_budget_waits_for_failures_and_enough_lapses(
    limiter: LoginLimiter, clock: ManualClock, settings: Settings
) -> None:
    """A late failure can overfill a budget; the retry time then needs two slots to free."""
    late = await limiter.reserve_client("198.51.100.7")
    clock.advance(31)
    held = [await limiter.reserve_client("198.51.100.7") for _ in range(5)]  # the lapsed slot is reused
    assert late.reservation and all(d.allowed for d in held)
    await limiter.settle(late.reservation, "failure")  # 1 failure + 5 reservations, limit 5
    refused = await limiter.reserve_client("198.51.100.7")
    assert refused.retry_after == settings.rate_limit_login_window_seconds  # not the 30 s of a lapse
    clock.advance(settings.rate_limit_reservation_seconds)  # the requests holding them died
    assert (await limiter.reserve_client("198.51.100.7")).remaining == 3


# ---- per phone number --------------------------------------------------------------------------


async def test_pin_lock_spans_clients_and_password_success_unlocks(
    limiter: LoginLimiter, redis: Redis, settings: Settings
) -> None:
    for attempt in range(5):
        client = await limiter.reserve_client(f"198.51.100.{attempt}")
        account = await limiter.reserve_account(PHONE, "pin")
        assert account.allowed and account.remaining == 4 - attempt
        await limiter.settle_login(client.reservation, account.reservation, "pin", False, None)

    locked = await limiter.reserve_account(PHONE, "pin", refusal_event=b'{"reason":"pin_locked"}')
    assert not locked.allowed and locked.reason == "pin_locked"
    assert locked.retry_after == settings.pin_lock_seconds  # lifts a PIN_LOCK_SECONDS window after the failures
    assert (await limiter.reserve_account("+250788000000", "pin")).allowed  # other numbers unaffected

    password = await limiter.reserve_account(PHONE, "password")
    assert password.allowed
    client = await limiter.reserve_client("203.0.113.50")
    await limiter.settle_login(client.reservation, password.reservation, "password", True, None)
    unlocked = await limiter.reserve_account(PHONE, "pin")
    assert unlocked.allowed and unlocked.remaining == 4


async def test_pin_success_resets_the_count_but_keeps_reservations(limiter: LoginLimiter) -> None:
    for _ in range(3):
        account = await limiter.reserve_account(PHONE, "pin")
        assert account.reservation
        await limiter.settle(account.reservation, "failure")
    in_flight = await limiter.reserve_account(PHONE, "pin")
    success = await limiter.reserve_account(PHONE, "pin")
    assert not (await limiter.reserve_account(PHONE, "pin")).allowed
    assert success.reservation and in_flight.reservation
    await limiter.settle(success.reservation, "success")
    after = await limiter.reserve_account(PHONE, "pin")
    assert after.allowed and after.remaining == 3  # the other request's reservation still counts


async def test_pin_lock_is_exact_under_concurrency(limiter: LoginLimiter, settings: Settings) -> None:
    decisions = await asyncio.gather(*(limiter.reserve_account(PHONE, "pin") for _ in range(100)))
    assert sum(d.allowed for d in decisions) == settings.pin_max_failures


@pytest.mark.parametrize("settings", [{"account_max_failures": 3, "account_window_seconds": 60}], indirect=True)
async def test_password_failures_per_account_window(limiter: LoginLimiter, clock: ManualClock) -> None:
    for _ in range(3):
        account = await limiter.reserve_account(PHONE, "password")
        assert account.allowed and account.reservation
        await limiter.settle(account.reservation, "failure")
        clock.advance(10)
    refused = await limiter.reserve_account(PHONE, "password")
    assert (refused.allowed, refused.reason, refused.retry_after, refused.window) == (False, "account_locked", 30, 60)
    success = await limiter.reserve_account("+250788000000", "password")
    assert success.allowed and success.reservation
    await limiter.settle(success.reservation, "success")
    clock.advance(30)
    assert (await limiter.reserve_account(PHONE, "password")).allowed


async def test_settle_login_requires_the_matching_method(limiter: LoginLimiter) -> None:
    account = await limiter.reserve_account(PHONE, "pin")
    with pytest.raises(ValueError, match="pin"):
        await limiter.settle_login(None, account.reservation, "password", True, None)


# ---- registration ------------------------------------------------------------------------------


async def test_every_registration_attempt_counts(limiter: LoginLimiter, clock: ManualClock, settings: Settings) -> None:
    decisions = [await limiter.hit_register("198.51.100.7") for _ in range(settings.register_limit + 3)]
    assert [d.remaining for d in decisions if d.allowed] == list(range(settings.register_limit - 1, -1, -1))
    assert all(d.reservation is None for d in decisions)
    refused = decisions[-1]
    assert (refused.allowed, refused.retry_after) == (False, settings.register_window_seconds)
    assert (await limiter.reserve_client("198.51.100.7")).allowed  # login budget is separate
    clock.advance(settings.register_window_seconds)
    assert (await limiter.hit_register("198.51.100.7")).allowed


# ---- keys expire ------------------------------------------------------------------------------


async def test_every_limiter_key_has_a_bounded_ttl(limiter: LoginLimiter, redis: Redis, settings: Settings) -> None:
    await fail_client(limiter, "198.51.100.7", 5)
    await limiter.reserve_client("198.51.100.7", refusal_event=b"{}")
    await limiter.reserve_client("2001:db8::/64")  # a reservation only
    await limiter.hit_register("198.51.100.7")
    pin = await limiter.reserve_account(PHONE, "pin")
    password = await limiter.reserve_account(PHONE, "password")
    await limiter.settle_login(None, pin.reservation, "pin", False, b'{"phone_number":"+250788123456"}')
    await limiter.settle_login(None, password.reservation, "password", False, None)

    hold = settings.rate_limit_reservation_seconds * 1000
    bounds = {
        "c:login:": settings.rate_limit_login_window_seconds * 1000 + hold,
        "c:register:": settings.register_window_seconds * 1000 + hold,
        "p:password:": settings.account_window_seconds * 1000 + hold,
        "p:pin:": settings.pin_lock_seconds * 1000 + hold,
    }
    streams = set(limiter.keys.audit_streams())
    seen = set()
    async for raw in redis.scan_iter(match=f"{settings.redis_key_prefix}*"):
        key = raw.decode()
        if key in streams:
            continue  # the audit pipeline's, trimmed by its writer once stored
        (kind,) = [kind for kind in bounds if kind in key]
        ttl = await redis.pttl(key)
        assert 0 < ttl <= bounds[kind], (key, ttl)
        seen.add(kind)
    assert seen == set(bounds)


# ---- audit events ride along ------------------------------------------------------------------


async def test_refusal_records_one_event_in_the_client_shard(limiter: LoginLimiter, redis: Redis) -> None:
    stream = limiter.keys.audit_stream(limiter.keys.shard_of("198.51.100.7"))
    await fail_client(limiter, "198.51.100.7", 4)
    assert (await limiter.reserve_client("198.51.100.7", refusal_event=b'{"n":1}')).allowed
    assert await all_streams(redis, limiter) == {}  # an allowed reserve records nothing

    refused = await limiter.reserve_client("198.51.100.7", refusal_event=b'{"n":2}')
    assert not refused.allowed
    assert await stream_entries(redis, stream) == [{STREAM_FIELD.encode(): b'{"n":2}'}]
    assert await all_streams(redis, limiter) == {stream: 1}


async def test_account_refusal_records_in_the_phone_shard(limiter: LoginLimiter, redis: Redis) -> None:
    for _ in range(5):
        assert (await limiter.reserve_account(PHONE, "pin")).allowed
    await limiter.reserve_account(PHONE, "pin", refusal_event=b'{"n":3}')
    stream = limiter.keys.audit_stream(limiter.keys.shard_of(PHONE))
    assert await stream_entries(redis, stream) == [{b"e": b'{"n":3}'}]


async def test_settle_login_publishes_the_event_once(limiter: LoginLimiter, redis: Redis) -> None:
    client_stream = limiter.keys.audit_stream(limiter.keys.shard_of("198.51.100.7"))
    phone_stream = limiter.keys.audit_stream(limiter.keys.shard_of(PHONE))
    client = await limiter.reserve_client("198.51.100.7")
    account = await limiter.reserve_account(PHONE, "password")
    await limiter.settle_login(client.reservation, account.reservation, "password", False, b'{"n":1}')
    assert await all_streams(redis, limiter) == {client_stream: 1}

    account = await limiter.reserve_account(PHONE, "password")
    await limiter.settle_login(None, account.reservation, "password", False, b'{"n":2}')
    earlier = [{b"e": b'{"n":1}'}] if phone_stream == client_stream else []
    assert await stream_entries(redis, phone_stream) == [*earlier, {b"e": b'{"n":2}'}]

    await limiter.settle_login(None, None, "password", False, b'{"n":3}', "203.0.113.9")
    shard_stream = limiter.keys.audit_stream(limiter.keys.shard_of("203.0.113.9"))
    assert {b"e": b'{"n":3}'} in await stream_entries(redis, shard_stream)
    await limiter.settle_login(None, None, "pin", False, b'{"phone_number":"+250788999999","n":4}')
    fallback_stream = limiter.keys.audit_stream(limiter.keys.shard_of("+250788999999"))
    assert {b"e": b'{"phone_number":"+250788999999","n":4}'} in await stream_entries(redis, fallback_stream)
    assert sum((await all_streams(redis, limiter)).values()) == 4


# ---- Redis Cluster: one slot per script call ---------------------------------------------------


class RecordingLimiter(LoginLimiter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[ScriptCall] = []

    async def execute(self, calls: Sequence[ScriptCall]) -> list[Any]:
        self.calls.extend(calls)
        return await super().execute(calls)


async def test_every_script_call_stays_in_one_hash_slot(redis: Redis, settings: Settings, clock: ManualClock) -> None:
    limiter = RecordingLimiter(redis, settings, clock=clock)
    clients = [f"198.51.100.{n}" for n in range(12)] + ["2001:db8:1::/64", "unknown"]
    phones = [f"+25078812{n:04d}" for n in range(12)]
    for client_key, phone in zip(clients, phones, strict=False):
        for _ in range(6):
            client = await limiter.reserve_client(client_key, refusal_event=b"{}")
            account = await limiter.reserve_account(phone, "pin", refusal_event=b"{}")
            await limiter.settle_login(client.reservation, account.reservation, "pin", False, b"{}", client_key)
        password = await limiter.reserve_account(phone, "password", refusal_event=b"{}")
        await limiter.settle_login(None, password.reservation, "password", True, b"{}")
        await limiter.hit_register(client_key)
    assert len(limiter.calls) > 150
    assert any(len(call.keys) == 3 for call in limiter.calls)  # password success: budget, PIN lock, stream
    for call in limiter.calls:
        assert len({key_slot(key.encode()) for key in call.keys}) == 1, call.keys


# ---- Redis restarts and outages ----------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """A Redis of this test's own, to flush and restart without disturbing anyone else's."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    yield server
    server.stop()


async def test_scripts_reload_after_script_flush(private_redis: EmbeddedRedis, settings: Settings) -> None:
    redis = Redis.from_url(private_redis.url)
    try:
        limiter = LoginLimiter(redis, settings)
        assert (await limiter.reserve_client("198.51.100.7")).allowed
        await redis.script_flush()
        client = await limiter.reserve_client("198.51.100.7")
        account = await limiter.reserve_account(PHONE, "pin")
        await redis.script_flush()
        # the pipelined path (two settles in one round trip) reloads as well
        await limiter.settle_login(client.reservation, account.reservation, "pin", False, b"{}")
        assert await redis.zcount(limiter.budget_key("pin", PHONE), "(0", "+inf") == 1
        assert await redis.zcount(limiter.budget_key("login", "198.51.100.7"), "(0", "+inf") == 1
        assert sum((await all_streams(redis, limiter)).values()) == 1  # sent exactly once
    finally:
        await redis.aclose()


async def test_restart_fails_closed_then_recovers(private_redis: EmbeddedRedis, settings: Settings) -> None:
    redis = create_redis(msgspec.structs.replace(settings, redis_url=private_redis.url))
    try:
        limiter = LoginLimiter(redis, settings)
        assert (await limiter.reserve_client("198.51.100.7")).allowed
        private_redis.stop()
        with pytest.raises(LimiterUnavailable):
            await limiter.reserve_client("198.51.100.7")
        private_redis.start()  # same port, empty: no scripts loaded
        for _ in range(3):  # the pool may first hand out a connection the restart broke
            try:
                decision = await limiter.reserve_client("198.51.100.7")
                break
            except LimiterUnavailable:
                continue
        assert decision.allowed
    finally:
        await redis.aclose()


async def test_a_batch_whose_replies_never_come_fails_within_the_socket_timeout(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    """The batch's replies share one deadline: a Redis that takes the calls and stops answering is
    LimiterUnavailable after the socket timeout, and the connection is not handed back half read."""
    redis = Redis.from_url(private_redis.url, socket_timeout=0.3, retry=None)
    admin = Redis.from_url(private_redis.url)
    try:
        limiter = LoginLimiter(redis, settings)
        for _ in range(settings.rate_limit_login_failures):  # connected, scripts loaded, budget spent
            assert (await limiter.reserve_client("198.51.100.7")).allowed
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # every command waits 1.5 s
        started = time.monotonic()
        # Refusals: were their late replies read as the next batch's, that one would be refused too.
        calls = [limiter.reserve_call("login", "198.51.100.7") for _ in range(3)]
        with pytest.raises(LimiterUnavailable):
            await limiter.execute(calls)
        assert time.monotonic() - started < 1.2  # the deadline (0.3 s), not the pause
        await asyncio.sleep(1.5)  # the pause ends; the replies of the abandoned batch are still sent
        decision = await limiter.reserve_client("198.51.100.8")
        assert decision.allowed and decision.remaining == settings.rate_limit_login_failures - 1
    finally:
        await redis.aclose()
        await admin.aclose()


async def test_redis_down_raises_limiter_unavailable_quickly(settings: Settings) -> None:
    redis = create_redis(msgspec.structs.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    limiter = LoginLimiter(redis, settings)
    started = time.monotonic()
    try:
        with pytest.raises(LimiterUnavailable):
            await limiter.reserve_client("198.51.100.7", refusal_event=b"{}")
        with pytest.raises(LimiterUnavailable):
            await limiter.settle_login(None, None, "pin", False, b"{}", "198.51.100.7")
    finally:
        await redis.aclose()
    assert time.monotonic() - started < 2


async def test_redis_that_never_answers_raises_limiter_unavailable(settings: Settings) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accept, read, never answer
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, retry=None)
    limiter = LoginLimiter(redis, settings)
    started = time.monotonic()
    try:
        with pytest.raises(LimiterUnavailable):
            await limiter.reserve_client("198.51.100.7")
    finally:
        await redis.aclose()
        server.close()
    assert time.monotonic() - started < 2
