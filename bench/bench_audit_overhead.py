"""What auditing costs the login path: the same server with auditing on and off, in one run.

Two uvicorn processes (one worker each) on the same Postgres and Redis: the real app, whose login
calls append their event to the Redis stream inside the limiter's script and whose in-process
writer copies them into Postgres; and the same app with no event handed to the scripts and no
writer (``bench/login_without_audit.py``). Rounds alternate between them; medians are compared.

- the refused (429) path, where auditing is the largest share of the work (wrk, 32 connections);
- a verified sign-in (200: argon2 verification, tokens, settle), the path real users take, from
  many simulated clients (one client may have only 5 attempts in flight).

Each request carries a User-Agent naming its server, so the run checks that the "on" server
stored an audit row for every answered request and the "off" server stored none.

    python -m bench.bench_audit_overhead [--rounds 5] [--seconds 5] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx

from app.core.postgres import plain_dsn
from bench.common import bench_parser, median, server_env, servers, uvicorn_process, wrk

TARGET = 0.9
PHONE = "0788555123"
PASSWORD = "Umuganda-Kigali-42"
WRONG = json.dumps({"phone_number": PHONE, "password": "Wrong-Password-77"})
RIGHT = json.dumps({"phone_number": PHONE, "password": PASSWORD})
APPS = {"on": "app.asgi:create_app_from_env", "off": "bench.login_without_audit:create_app"}


def post(base: str, path: str, body: str, user_agent: str) -> httpx.Response:
    return httpx.post(
        base + path, content=body, headers={"content-type": "application/json", "user-agent": user_agent}, timeout=30
    )


async def stored_rows(dsn: str, user_agent: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM login_attempts WHERE user_agent = $1", user_agent))
    finally:
        await conn.close()


def run(rounds: int, seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    rates: dict[tuple[str, str], list[float]] = {}
    answered: dict[str, int] = {"on": 0, "off": 0}
    with servers(database_url, redis_url) as settings:
        dsn = plain_dsn(settings.database_url or "")
        envs = {
            # Sign-ins come from many simulated clients (X-Forwarded-For from a trusted loopback proxy):
            # one client may have only 5 attempts in flight, as the budget counts reservations.
            name: server_env(
                settings,
                REDIS_KEY_PREFIX=f"{settings.redis_key_prefix}{name}:",
                TRUSTED_PROXIES="127.0.0.1/32",
            )
            for name in APPS
        }
        with uvicorn_process(APPS["on"], envs["on"]) as on_base, uvicorn_process(APPS["off"], envs["off"]) as off_base:
            bases = {"on": on_base, "off": off_base}
            registration = {
                "name": "Bench User",
                "phone_number": PHONE,
                "password": PASSWORD,
                "user_type": "parent",
            }
            created = post(on_base, "/api/auth/register", json.dumps(registration), "bench-setup")
            assert created.status_code == 201, created.text
            for name, base in bases.items():
                assert post(base, "/api/auth/login", RIGHT, f"bench-{name}").status_code == 200
            for round_number in range(rounds):
                line = []
                for path_name, body, connections in (("verified", RIGHT, 8), ("refused", WRONG, 32)):
                    for name, base in bases.items():
                        user_agent = f"bench-{name}"
                        if path_name == "refused":
                            for _ in range(6):  # spend the budget: everything after is refused
                                post(base, "/api/auth/login", WRONG, user_agent)
                        result = wrk(
                            f"{base}/api/auth/login",
                            seconds=seconds,
                            connections=connections,
                            body=body,
                            headers={"User-Agent": user_agent},
                            many_clients=path_name == "verified",
                        )
                        expected_non_2xx = result.requests if path_name == "refused" else 0
                        assert result.non_2xx == expected_non_2xx, f"{path_name} on {name}: {result}"
                        answered[name] += result.requests + (6 if path_name == "refused" else 0)
                        rates.setdefault((path_name, name), []).append(result.requests_per_second)
                        line.append(f"{path_name}/{name} {result.requests_per_second:7.0f}")
                print(f"  round {round_number + 1}: " + "   ".join(line), flush=True)
                # The next round's sign-ins must not be refused: clear the spent budgets (each
                # server's limiter keys live under its own prefix; the audit streams stay).
                asyncio.run(clear_budgets(settings.redis_url or "", [env["REDIS_KEY_PREFIX"] for env in envs.values()]))
            on_rows = asyncio.run(wait_for_rows(dsn, "bench-on", answered["on"]))
            off_rows = asyncio.run(stored_rows(dsn, "bench-off"))
    result = {f"{path}_{name}_rps": median(values) for (path, name), values in rates.items()}
    for path in ("verified", "refused"):
        result[f"{path}_ratio"] = result[f"{path}_on_rps"] / result[f"{path}_off_rps"]
    result["on_rows"], result["on_answered"], result["off_rows"] = on_rows, answered["on"], off_rows
    return result


async def wait_for_rows(dsn: str, user_agent: str, at_least: int, within: float = 60) -> int:
    """The writer drains the stream shortly after the load stops; wait for it, bounded."""
    deadline = time.monotonic() + within
    while (rows := await stored_rows(dsn, user_agent)) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return rows


async def clear_budgets(redis_url: str, prefixes: list[str]) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            for budgets in (f"{prefix}*:c:*", f"{prefix}*:p:*"):  # client and phone budgets (app/redis_keys.py)
                keys = [key async for key in redis.scan_iter(match=budgets)]
                if keys:
                    await redis.delete(*keys)
    finally:
        await redis.aclose()


def main() -> dict[str, float]:
    parser = bench_parser(__doc__, rounds=True)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.database_url, args.redis_url)
    for path, label in (("verified", "verified sign-in (200)"), ("refused", "refused path (429)")):
        ratio = result[f"{path}_ratio"]
        print(
            f"{label}: audit on {result[f'{path}_on_rps']:.0f} req/s vs off {result[f'{path}_off_rps']:.0f} req/s"
            f" = {ratio:.2f}x (target >= {TARGET}) {'ok' if ratio >= TARGET else 'BELOW TARGET'}"
        )
    print(
        f"audit rows: {result['on_rows']:.0f} stored for {result['on_answered']:.0f} answered requests with auditing"
        f" on (a request cut off when wrk stopped may add one); {result['off_rows']:.0f} with auditing off"
    )
    return result


if __name__ == "__main__":
    main()
