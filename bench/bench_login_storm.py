"""A login storm: verified failures against the argon2 ceiling, and /health while it rages.

- argon2 ceiling: cores / the measured time of one argon2id verification (default parameters);
  the storm's verified failures per second (counted in the audit table: attempts whose credential
  was checked, not refusals) are reported as a ratio to it. Also printed: what ``cores`` threads
  verifying side by side achieve with no server at all (memory bandwidth is shared: argon2id
  uses 19 MiB per verification), the ceiling the server can actually approach.
- /health p99 during the storm against idle, same server, same run, probed by one client every
  20 ms (a probe, not a second load: hammering /health would take the CPU the storm is measured on).
- login latency under rising load (1 to 64 connections), plotted to docs/img/login-latency.png.

Every request comes from another simulated client (X-Forwarded-For through a trusted proxy), so
nearly every attempt is verified: the worst case for the CPU, not for the limiter.

    python -m bench.bench_login_storm [--seconds 10] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import secrets
import statistics
import threading
import time

import asyncpg
import httpx
from argon2 import PasswordHasher

from app.core.postgres import plain_dsn
from bench.common import api_process, bench_parser, save_plot, servers, wrk

WRONG = json.dumps({"phone_number": "0788123456", "password": "Wrong-Password-77"})


def argon2_verify_seconds(samples: int = 30) -> float:
    hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    stored = hasher.hash(secrets.token_hex(16))
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        with contextlib.suppress(Exception):  # a mismatch is the point
            hasher.verify(stored, "not-the-password")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parallel_verifications_per_second(threads: int, seconds: float = 3.0) -> float:
    """argon2id verifications per second with ``threads`` threads at once (argon2 releases the GIL)."""
    hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    stored = hasher.hash(secrets.token_hex(16))
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def verify_until_deadline(index: int) -> None:
        while time.perf_counter() < deadline:
            with contextlib.suppress(Exception):
                hasher.verify(stored, "not-the-password")
            counts[index] += 1

    workers = [threading.Thread(target=verify_until_deadline, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


VERIFIED_REASONS = ("invalid_credentials", "unknown_account", "pin_not_enabled", "account_inactive", "ok")


async def verified_between(dsn: str, since: datetime.datetime, until: datetime.datetime) -> int:
    """Attempts whose credential was checked (one argon2 verification each), from the audit table."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM login_attempts WHERE created_at >= $1 AND created_at < $2 AND reason = ANY($3)",
                since,
                until,
                list(VERIFIED_REASONS),
            )
        )
    finally:
        await conn.close()


async def wait_until_written(dsn: str, until: datetime.datetime, within: float = 30) -> None:
    """The audit writer lags by up to AUDIT_FLUSH_MS: wait until rows newer than ``until`` appear."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM login_attempts WHERE created_at >= $1", until):
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def probe_health(base: str, seconds: float, interval: float = 0.02) -> list[float]:
    """Latencies (ms) of GET /health sent one at a time every ``interval`` for ``seconds``."""
    latencies: list[float] = []
    with httpx.Client(timeout=10) as client:
        client.get(f"{base}/health")  # connection set up outside the measurement
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            client.get(f"{base}/health")
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return latencies


def percentile_99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def run(seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    cores = os.cpu_count() or 1
    verify = argon2_verify_seconds()
    ceiling = cores / verify
    parallel = parallel_verifications_per_second(cores)
    result: dict[str, float] = {
        "cores": cores,
        "verify_ms": verify * 1000,
        "ceiling_per_s": ceiling,
        "parallel_per_s": parallel,
    }
    with (
        servers(database_url, redis_url) as settings,
        api_process(settings, workers=cores, TRUSTED_PROXIES="127.0.0.1/32") as base,
    ):
        # Warm up first (the workers' hash threads, pooled connections, prepared statements): the
        # storm is measured in the steady state a storm in the field reaches within seconds.
        wrk(f"{base}/api/auth/login", seconds=3, connections=64, body=WRONG, many_clients=True, many_numbers=True)
        idle = probe_health(base, seconds)
        storm_result: dict[str, object] = {}

        def storm() -> None:
            storm_result["load"] = wrk(
                f"{base}/api/auth/login",
                seconds=seconds + 2,
                connections=64,
                body=WRONG,
                many_clients=True,
                many_numbers=True,
            )

        dsn = plain_dsn(settings.database_url or "")
        thread = threading.Thread(target=storm)
        thread.start()
        time.sleep(1)
        # Verified attempts are counted over the middle of the storm, while /health is measured.
        window_start = datetime.datetime.now(datetime.UTC)
        during = probe_health(base, seconds)
        window_end = datetime.datetime.now(datetime.UTC)
        thread.join()
        asyncio.run(wait_until_written(dsn, window_end))
        verified = asyncio.run(verified_between(dsn, window_start, window_end))
        load = storm_result["load"]
        result.update(
            health_idle_p99_ms=percentile_99(idle),
            health_storm_p99_ms=percentile_99(during),
            storm_answers_per_s=load.requests_per_second,  # type: ignore[attr-defined]
            storm_rps=verified / (window_end - window_start).total_seconds(),
        )
        curve = []
        for connections in (1, 4, 16, 64):
            point = wrk(f"{base}/api/auth/login", seconds=max(3, seconds / 2), connections=connections, body=WRONG,
                        many_clients=True, many_numbers=True)  # fmt: skip
            curve.append((connections, point.latency_p50_ms, point.latency_p99_ms, point.requests_per_second))
    result["verified_ratio"] = result["storm_rps"] / ceiling
    result["verified_parallel_ratio"] = result["storm_rps"] / parallel
    result["health_p99_ratio"] = result["health_storm_p99_ms"] / max(result["health_idle_p99_ms"], 0.001)
    plot_curve(curve)
    for connections, p50, p99, rps in curve:
        print(f"  {connections:>3} connections: {rps:7.0f} logins/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    return result


def plot_curve(curve: list[tuple[int, float, float, float]]) -> None:
    save_plot(
        "login-latency",
        [c for c, *_ in curve],
        {"p50": [p50 for _, p50, _, _ in curve], "p99": [p99 for _, _, p99, _ in curve]},
        xlabel="concurrent connections (every attempt verified)",
        ylabel="login latency (ms)",
        title="Failed logins under rising load",
        logx=True,
    )


def main() -> dict[str, float]:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    r = run(args.seconds, args.database_url, args.redis_url)
    print(
        f"argon2 ceiling: {r['cores']:.0f} cores / {r['verify_ms']:.1f} ms = {r['ceiling_per_s']:.0f} verifications/s; "
        f"storm verified {r['storm_rps']:.0f} failed logins/s = {r['verified_ratio']:.2f}x of the ceiling"
    )
    print(
        f"  ({r['cores']:.0f} threads verifying side by side, no server: {r['parallel_per_s']:.0f}/s; "
        f"the storm reached {r['verified_parallel_ratio']:.2f}x of that; "
        f"{r['storm_answers_per_s']:.0f} answers/s in all)"
    )
    print(
        f"/health p99 during the storm {r['health_storm_p99_ms']:.1f} ms vs idle {r['health_idle_p99_ms']:.1f} ms "
        f"= {r['health_p99_ratio']:.1f}x"
    )
    return r


if __name__ == "__main__":
    main()
