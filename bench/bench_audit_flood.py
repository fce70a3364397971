"""Sign-in p99 while the security team floods the audit API, vs idle, on one server.

40 clients repeat summaries and login-attempt pages (issue 22: 20 of them used to freeze every
sign-in of the process for 30 s) while one client signs in again and again; the same sign-ins are
timed on the idle server first. uvicorn with one worker, 200,000 audit rows.

    python -m bench.bench_audit_flood [--sign-ins 60] [--readers 40] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import asyncio
import time

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


async def measure(base: str, database_url: str, sign_ins: int, readers: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        staff, member = "0788000101", "0788000102"
        for phone in (staff, member):
            body = {"name": "Bench Flood", "phone_number": phone, "password": PASSWORD, "user_type": "parent"}
            await http.post("/api/auth/register", json=body)
        conn = await asyncpg.connect(plain_dsn(database_url))
        try:
            await conn.execute("UPDATE users SET role = 'security' WHERE phone_number = '+250788000101'")
            await conn.execute(FILL, ROWS)
            await conn.execute("ANALYZE login_attempts")
        finally:
            await conn.close()
        login = await http.post("/api/auth/login", json={"phone_number": staff, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        idle, _ = await timed_sign_ins(http, member, sign_ins)
        statuses: dict[int, int] = {}
        flooding = True

        async def reader(n: int) -> None:
            while flooding:
                if n % 2:
                    response = await http.get("/api/audit/summary", params={"bucket": "hour"}, headers=headers)
                else:
                    response = await http.get("/api/audit/login-attempts", params={"limit": "100"}, headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        tasks = [asyncio.create_task(reader(n)) for n in range(readers)]
        await asyncio.sleep(1)  # the flood is on
        flood, failed = await timed_sign_ins(http, member, sign_ins)
        flooding = False
        await asyncio.gather(*tasks)
    print(f"audit reads answered during the flood: {dict(sorted(statuses.items()))}")
    return {
        "idle_p50_ms": sorted(idle)[len(idle) // 2],
        "flood_p50_ms": sorted(flood)[len(flood) // 2],
        "idle_p99_ms": p99(idle),
        "flood_p99_ms": p99(flood),
        "ratio": p99(flood) / p99(idle),
        "flood_sign_in_failures": failed,
        "audit_500s": statuses.get(500, 0),
    }


def main() -> dict[str, float]:
    parser = bench_parser(__doc__)
    parser.add_argument("--sign-ins", type=int, default=60)
    parser.add_argument("--readers", type=int, default=40)
    parser.add_argument("--read-concurrency", type=int, default=1, help="AUDIT_READ_CONCURRENCY of the server")
    args = parser.parse_args()
    extra = {"AUDIT_READ_CONCURRENCY": str(args.read_concurrency)}
    with servers(args.database_url, args.redis_url) as settings, api_process(settings, workers=1, **extra) as base:
        result = asyncio.run(measure(base, settings.database_url or "", args.sign_ins, args.readers))
    print(
        f"sign-in p99 during a flood of {args.readers} security-team readers {result['flood_p99_ms']:.1f} ms "
        f"vs idle {result['idle_p99_ms']:.1f} ms = {result['ratio']:.2f}x (target <= 2; p50 "
        f"{result['flood_p50_ms']:.1f} vs {result['idle_p50_ms']:.1f} ms; "
        f"AUDIT_READ_CONCURRENCY={args.read_concurrency}); "
        f"sign-ins refused during the flood: {result['flood_sign_in_failures']:.0f}; "
        f"audit 500s: {result['audit_500s']:.0f}"
    )
    return result


if __name__ == "__main__":
    main()
