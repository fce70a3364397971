"""Sign-in p99 while the security team floods the audit API, vs idle, on one server.

40 clients repeat summaries and login-attempt pages (issue 22: 20 of them used to freeze every
sign-in of the process for 30 s) while one client signs in again and again; the same sign-ins are
timed on the idle server just before. uvicorn with one worker, 200,000 audit rows (and their hourly
rollups). Each round times idle sign-ins, then starts the flood, lets it run ``--warmup`` seconds
(a sustained flood, not its first seconds) and times the same number of sign-ins during it; the
ratio reported is the median of the rounds' p99 ratios. The machine's load average is printed: on a
shared machine the rounds matter more than any one of them.

    python -m bench.bench_audit_flood [--rounds 5] [--sign-ins 40] [--readers 40] [--warmup 8] [--polite]
        [--database-url ...] [--redis-url ...]

By default the readers send their next request as soon as an answer arrives, refusals included
(the worst case: a script that ignores Retry-After); ``--polite`` has them wait Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import statistics
import time
from typing import Any

import asyncpg
import httpx

from app.core.postgres import plain_dsn
from bench.common import api_process, bench_parser, servers

PASSWORD = "Umuganda-Kigali-42"
ROWS = 200_000
FILL = """
INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, auth_method, ip_address)
SELECT gen_random_uuid(), now() - i * interval '400 milliseconds', '+25078' || lpad((i % 5000)::text, 7, '0'),
       i % 3 = 0, CASE WHEN i % 3 = 0 THEN 'ok' ELSE 'invalid_credentials' END, 'password',
       '41.186.0.0'::inet + (i % 60000)
FROM generate_series(1, $1::int) AS i
"""
# What the audit writer keeps in step with every batch (app/audit/pipeline/store.py).
ROLLUPS = """
INSERT INTO login_attempts_hourly (hour, success, reason, channel, attempts)
SELECT date_trunc('hour', created_at, 'UTC'), success, reason, channel, count(*)
FROM login_attempts GROUP BY 1, 2, 3, 4
"""


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def timed_sign_ins(http: httpx.AsyncClient, phone: str, count: int) -> tuple[list[float], int]:
    times: list[float] = []
    failures = 0
    for _ in range(count):
        started = time.perf_counter()
        response = await http.post("/api/auth/login", json={"phone_number": phone, "password": PASSWORD})
        times.append((time.perf_counter() - started) * 1000)
        failures += response.status_code != 200
    return times, failures


async def reader(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    n: int,
    stop: asyncio.Event,
    statuses: dict[int, int],
    polite: bool,
) -> None:
    """One of the flood's clients: summaries (odd ``n``) or pages, one after another until ``stop``;
    ``polite``: waiting Retry-After after a refusal (or until ``stop``), as a well-behaved script would."""
    while not stop.is_set():
        if n % 2:
            response = await http.get("/api/audit/summary", params={"bucket": "hour"}, headers=headers)
        else:
            response = await http.get("/api/audit/login-attempts", params={"limit": "100"}, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if polite and "retry-after" in response.headers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), float(response.headers["retry-after"]))


def flood(base: str, headers: dict[str, str], readers: int, polite: bool, stop: Any, results: Any) -> None:
    """The readers, in a process of their own: their client's work never delays the timed sign-ins'
    client (one event loop driving 40 readers as fast as they are answered was most of a core, and
    the sign-ins waited in its queue: client time, not the server's)."""

    async def run() -> None:
        statuses: dict[int, int] = {}
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            tasks = [asyncio.create_task(reader(http, headers, n, done, statuses, polite)) for n in range(readers)]
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()
            await asyncio.gather(*tasks)
        results.put(statuses)

    asyncio.run(run())


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def measure(
    base: str, database_url: str, *, rounds: int, sign_ins: int, readers: int, warmup: float, polite: bool
) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        staff, member = "0788000101", "0788000102"
        for phone in (staff, member):
            body = {"name": "Bench Flood", "phone_number": phone, "password": PASSWORD, "user_type": "parent"}
            await http.post("/api/auth/register", json=body)
        conn = await asyncpg.connect(plain_dsn(database_url))
        try:
            await conn.execute("UPDATE users SET role = 'security' WHERE phone_number = '+250788000101'")
            await conn.execute(FILL, ROWS)
            await conn.execute(ROLLUPS)
            await conn.execute("ANALYZE login_attempts")
        finally:
            await conn.close()
        login = await http.post("/api/auth/login", json={"phone_number": staff, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        statuses: dict[int, int] = {}
        idle_all: list[float] = []
        flood_all: list[float] = []
        ratios: list[float] = []
        failed = 0
        for number in range(1, rounds + 1):
            idle, _ = await timed_sign_ins(http, member, sign_ins)
            context = multiprocessing.get_context("spawn")
            stop, results = context.Event(), context.Queue()
            flooding = context.Process(target=flood, args=(base, headers, readers, polite, stop, results))
            flooding.start()
            await asyncio.sleep(warmup)  # the flood is on, past its first seconds
            flooded, refused = await timed_sign_ins(http, member, sign_ins)
            stop.set()
            for status, count in results.get(timeout=120).items():
                statuses[status] = statuses.get(status, 0) + count
            flooding.join(timeout=30)
            failed += refused
            idle_all += idle
            flood_all += flooded
            ratios.append(p99(flooded) / p99(idle))
            print(
                f"round {number}: sign-in p99 flood {p99(flooded):.1f} ms / idle {p99(idle):.1f} ms = "
                f"{ratios[-1]:.2f}x (p50 {median(flooded):.1f} / {median(idle):.1f} ms); "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    print(f"audit reads answered during the floods: {dict(sorted(statuses.items()))}")
    return {
        "idle_p50_ms": median(idle_all),
        "flood_p50_ms": median(flood_all),
        "idle_p99_ms": p99(idle_all),
        "flood_p99_ms": p99(flood_all),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "flood_sign_in_failures": failed,
        "audit_500s": statuses.get(500, 0),
    }


def main() -> dict[str, float]:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sign-ins", type=int, default=40, help="timed sign-ins, idle and flooded, per round")
    parser.add_argument("--readers", type=int, default=40)
    parser.add_argument("--warmup", type=float, default=8, help="seconds of flood before its sign-ins are timed")
    parser.add_argument("--polite", action="store_true", help="readers wait Retry-After after a refusal")
    parser.add_argument("--read-concurrency", type=int, default=1, help="AUDIT_READ_CONCURRENCY of the server")
    args = parser.parse_args()
    extra = {"AUDIT_READ_CONCURRENCY": str(args.read_concurrency)}
    load_before = os.getloadavg()[0]
    with servers(args.database_url, args.redis_url) as settings, api_process(settings, workers=1, **extra) as base:
        result = asyncio.run(
            measure(
                base,
                settings.database_url or "",
                rounds=args.rounds,
                sign_ins=args.sign_ins,
                readers=args.readers,
                warmup=args.warmup,
                polite=args.polite,
            )
        )
    print(
        f"sign-in p99 during a flood of {args.readers} security-team readers: median of {args.rounds} rounds "
        f"{result['ratio']:.2f}x idle (rounds {result['ratio_min']:.2f}-{result['ratio_max']:.2f}x; target <= 2); "
        f"all rounds pooled: p99 {result['flood_p99_ms']:.1f} vs {result['idle_p99_ms']:.1f} ms, "
        f"p50 {result['flood_p50_ms']:.1f} vs {result['idle_p50_ms']:.1f} ms; "
        f"AUDIT_READ_CONCURRENCY={args.read_concurrency}; readers {'polite' if args.polite else 'not waiting'}; "
        f"sign-ins refused during the floods: {result['flood_sign_in_failures']:.0f}; "
        f"audit 500s: {result['audit_500s']:.0f}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    return result


if __name__ == "__main__":
    main()
