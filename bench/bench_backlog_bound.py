"""Cost of the AUDIT_MAX_BACKLOG check on the refusal (429) script, against the script without it.

The bound is one XLEN inside the reserve script, before its XADD. This times the refusal call
(budget full, refusal event appended) of today's ``reserve.lua`` and of the same script with the
check taken out, in alternating rounds on one Redis, pipelined as the limiter sends them under a
storm. The ratio is what the check costs the Redis side of a 429 (on a private Redis, from its own
per-command time, which the noise of a shared machine barely touches); the rest of the 429 path
(HTTP, the gate) is unchanged by it.

    python -m bench.bench_backlog_bound [--rounds 7] [--calls 20000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from app.audit.pipeline.events import STREAM_FIELD, encode_event, new_event
from app.core.embedded import EmbeddedRedis
from bench.common import median

SCRIPT = Path(__file__).resolve().parent.parent / "app" / "ratelimit" / "reserve.lua"
GUARD = "if ARGV[8] and redis.call('XLEN', KEYS[2]) < tonumber(ARGV[9]) then"
PIPELINE = 200  # calls per round trip, about what the coalescer batches under a storm


async def time_refusals(redis: Redis, sha: str, prefix: str, calls: int, event: bytes, private: bool) -> float:
    """Microseconds per refusal: Redis's own time per EVALSHA on a private server (its
    commandstats, reset per round), else wall time. The stream is emptied first so both variants
    append alike."""
    budget, stream = f"{prefix}{{0}}:budget", f"{prefix}{{0}}:stream"
    await redis.delete(stream)
    if private:
        await redis.config_resetstat()
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for _ in range(calls // PIPELINE):
        pipe = redis.pipeline(transaction=False)
        for _ in range(PIPELINE):
            pipe.evalsha(sha, 2, budget, stream, now, 900_000, 5, 30_000, "1", "r", STREAM_FIELD, event, 10**9)
        replies = await pipe.execute()
        assert int(replies[-1][0]) == 0, "the budget must be full: every call is a refusal"
    elapsed = time.perf_counter() - started
    if private:
        return float((await redis.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"])
    return elapsed * 1e6 / calls


async def run(url: str, rounds: int, calls: int, private: bool) -> float:
    bounded = SCRIPT.read_text(encoding="utf-8")
    assert GUARD in bounded, "reserve.lua changed: update this benchmark's guard"
    unbounded = bounded.replace(GUARD, "if ARGV[8] then")
    redis = Redis.from_url(url)
    prefix = f"le-bench-backlog:{time.time_ns()}:"
    event = encode_event(new_event(phone_number="+250788123456", success=False, reason="rate_limited"))
    try:
        budget = f"{prefix}{{0}}:budget"
        now = int(time.time() * 1000)
        await redis.zadd(budget, {str(n): now for n in range(5)})  # five failures: the budget is spent
        shas = {"with check": await redis.script_load(bounded), "without": await redis.script_load(unbounded)}
        timings: dict[str, list[float]] = {name: [] for name in shas}
        await time_refusals(redis, shas["without"], prefix, PIPELINE * 10, event, private)  # warm up
        for round_number in range(rounds):
            order = list(shas) if round_number % 2 == 0 else list(reversed(shas))
            for name in order:
                timings[name].append(await time_refusals(redis, shas[name], prefix, calls, event, private))
            print(
                f"  round {round_number + 1}: "
                + "   ".join(f"{name} {timings[name][-1]:6.2f} us/refusal" for name in shas)
            )
        ratio = median(timings["with check"]) / median(timings["without"])
        clock = "Redis-side time per call" if private else "wall time per call"
        print(
            f"backlog bound: refusal script, with the XLEN check / without = {ratio:.3f} ({clock}, median of {rounds})"
        )
        return ratio
    finally:
        await redis.delete(f"{prefix}{{0}}:budget", f"{prefix}{{0}}:stream")
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", help="a Redis server (keys go under a run-specific prefix)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.rounds, args.calls, private=False))
        return
    with tempfile.TemporaryDirectory(prefix="le-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", appendonly=False)
        try:
            asyncio.run(run(server.start(), args.rounds, args.calls, private=True))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
