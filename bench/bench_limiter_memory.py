"""Redis memory per client tracked by the login limiter, in the worst realistic case: a full budget.

Every client gets ``rate_limit_login_failures`` failures recorded through the limiter's own
reserve script, then the script compares ``INFO memory`` before and after and prints bytes per
client against the 512-byte target. Failures are recorded with the script's ``hit`` mode (one call
per failure): it leaves exactly the entry a reserve + settle-as-failure pair leaves (the same
random integer member, scored with the failure time) in half the calls; ``--settle`` takes the
two-call path instead.

    python bench/bench_limiter_memory.py [--clients 100000] [--redis-url URL]

Without ``--redis-url`` a private Redis is started (the embedded one, no persistence), and the keys
carry the production prefix ``le:``. With a URL the keys go under ``--prefix`` and are deleted at the
end; on a busy shared server the figure is noisier.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.embedded import EmbeddedRedis
from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter, ScriptCall
from bench.common import BENCH_SECRET

TARGET_BYTES = 512
BATCH = 2000


def client_key(index: int, ipv6_every: int) -> str:
    """Distinct, realistically long keys: mostly IPv4 addresses, some IPv6 /64 networks."""
    if ipv6_every and index % ipv6_every == 0:
        return f"2001:db8:{(index >> 16) & 0xFFFF:x}:{index & 0xFFFF:x}::/64"
    return f"{100 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}.{17 + index % 200}"


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def fill_batch(limiter: LoginLimiter, batch: list[str], settle: bool) -> None:
    if not settle:
        replies = await limiter.execute([limiter.reserve_call("login", key, mode="h") for key in batch])
        assert all(int(reply[0]) for reply in replies)
        return
    replies = await limiter.execute([limiter.reserve_call("login", key) for key in batch])
    settles: list[ScriptCall] = []
    for key, reply in zip(batch, replies, strict=True):
        decision = limiter.decision("login", key, reply)
        assert decision.allowed and decision.reservation, decision
        settles.append(limiter.settle_call(decision.reservation, "failure"))
    await limiter.execute(settles)


async def fill(limiter: LoginLimiter, clock: list[float], keys: list[str], failures: int, settle: bool) -> None:
    """``failures`` recorded failures for every client, in pipelined batches, a few in flight at once."""
    for _ in range(failures):
        clock[0] += 7.3  # a few seconds between a client's guesses
        batches = [keys[start : start + BATCH] for start in range(0, len(keys), BATCH)]
        for group in range(0, len(batches), 4):
            await asyncio.gather(*(fill_batch(limiter, batch, settle) for batch in batches[group : group + 4]))


async def measure(url: str, prefix: str, clients: int, ipv6_every: int, settle: bool, cleanup: bool) -> int:
    settings = Settings.from_env(
        {},
        app_env="test",
        redis_url=url,
        redis_key_prefix=prefix,
        jwt_secret=BENCH_SECRET,
        pin_pepper=BENCH_SECRET[::-1],
    )
    redis = Redis.from_url(url)
    clock = [time.time()]
    limiter = LoginLimiter(redis, settings, clock=lambda: clock[0])
    try:
        # Load the scripts and let the allocator settle before the baseline.
        warm = await limiter.reserve_client("warm-up")
        assert warm.reservation
        await redis.delete(warm.reservation.key)
        before = await used_memory(redis)

        keys = [client_key(index, ipv6_every) for index in range(clients)]
        started = time.perf_counter()
        await fill(limiter, clock, keys, settings.rate_limit_login_failures, settle)
        elapsed = time.perf_counter() - started
        after = await used_memory(redis)

        sample = keys[:: max(1, clients // 1000)]
        budget_keys = [limiter.budget_key("login", key) for key in sample]
        usages = [await redis.memory_usage(key, samples=0) or 0 for key in budget_keys]
        encodings = Counter([(await redis.object("encoding", key)).decode() for key in budget_keys])
        sizes = Counter([await redis.zcard(key) for key in budget_keys])
        refused = await limiter.reserve_client(keys[0])
        assert not refused.allowed, "the budgets should be full"

        per_client = (after - before) / clients
        server = await redis.info("server")
        print(f"redis {server['redis_version']}, {clients} clients x {settings.rate_limit_login_failures} failures,")
        calls = clients * settings.rate_limit_login_failures * (2 if settle else 1)
        print(f"  filled in {elapsed:.1f} s ({calls / elapsed:,.0f} script calls/s)")
        print(f"  used_memory: {before:,} -> {after:,} bytes")
        print(
            f"  MEMORY USAGE over {len(usages)} sampled keys: mean {statistics.mean(usages):.0f}, "
            f"max {max(usages)} bytes (key + value, without the keyspace and expiry tables)"
        )
        print(f"  encodings {dict(encodings)}, entries per key {dict(sizes)}")
        verdict = "meets" if per_client <= TARGET_BYTES else "MISSES"
        print(
            f"limiter memory: {per_client:.0f} bytes/client (target <= {TARGET_BYTES}) over {clients} clients"
            f" -- {verdict} the target"
        )
        return 0 if per_client <= TARGET_BYTES else 1
    finally:
        if cleanup:
            doomed = [key async for key in redis.scan_iter(match=f"{prefix}*", count=5000)]
            for start in range(0, len(doomed), 5000):
                await redis.unlink(*doomed[start : start + 5000])
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--redis-url", default=None, help="an existing Redis; default: start a private one")
    parser.add_argument("--prefix", default="le-bench:", help="key prefix with --redis-url (default le-bench:)")
    parser.add_argument("--ipv6-every", type=int, default=5, help="every Nth client is an IPv6 /64 (0: none)")
    parser.add_argument("--settle", action="store_true", help="record failures as reserve + settle (twice the calls)")
    args = parser.parse_args()
    if args.redis_url:
        return asyncio.run(
            measure(args.redis_url, args.prefix, args.clients, args.ipv6_every, args.settle, cleanup=True)
        )
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", appendonly=False)
        url = server.start()
        try:
            return asyncio.run(measure(url, "le:", args.clients, args.ipv6_every, args.settle, cleanup=False))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
