"""Requests/s of the hot paths against GET /health on the same server, in one run.

One ``ladys-essence serve`` (one uvicorn worker) on Postgres and Redis, driven by wrk on loopback,
in interleaved rounds: ``GET /health``; a refused sign-in (the client's failure budget spent, so
the login gate answers 429); the signed-in ``GET /api/auth/profile``; ``POST /api/auth/refresh``
in the header form (no rotation) and in the body form (rotation: within the reuse grace, so every
request succeeds), over 64 sessions of another account (as the field rotates: many sessions, each
now and then), and once more all on one session (contention on one row, which no client makes).
Also the 429 of Litestar's own ``RateLimitMiddleware`` and slowapi's on FastAPI, each under its own
uvicorn worker.
Each figure is the median of the rounds; ratios are to ``/health``.

Then the failed sign-in's Postgres round trips, counted on the wire (``bench/wire.py``) on a server
of its own whose background writers are off (so every round trip counted is a sign-in's), and the
login storm of ``bench_login_storm`` (its share of the argon2 ceiling, /health p99 during it vs
idle); ``--no-storm`` leaves the storm out.

    python -m bench.bench_request_paths [--rounds 3] [--seconds 5] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import psutil

from app.core.settings import Settings
from bench import bench_login_storm
from bench.common import LoadResult, api_process, bench_parser, median, server_env, servers, uvicorn_process, wrk
from bench.wire import RoundTripRelay

PASSWORD = "Umuganda-Kigali-42"
WRONG = json.dumps({"phone_number": "0788123456", "password": "Wrong-Password-77"})
CONNECTIONS = 64
THREADS = 2
SESSIONS = 64  # the rotation row's sessions, one per connection on average
TARGETS = {  # path: (minimum ratio to /health, what it is)
    "refused": 1.5,
    "profile": 0.5,
    "refresh_header": 0.5,
    "refresh_body": 0.25,
}
LABELS = {
    "health": "GET /health",
    "refused": "refused login (429)",
    "profile": "GET /api/auth/profile (signed in)",
    "refresh_header": "POST /api/auth/refresh, header form",
    "refresh_body": f"POST /api/auth/refresh, body form (rotation), {SESSIONS} sessions",
    "refresh_body_one": "the same, one session rotated by all connections at once",
    "litestar_limiter": "Litestar RateLimitMiddleware 429",
    "slowapi": "slowapi (FastAPI) 429",
}


def _sign_up(base: str, phone: str) -> dict[str, str]:
    body = {"name": "Bench User", "phone_number": phone, "password": PASSWORD, "user_type": "parent"}
    response = httpx.post(base + "/api/auth/register", json=body, timeout=30)
    assert response.status_code == 201, response.text
    data: dict[str, str] = response.json()
    return data


def _sessions(base: str, phone: str, count: int) -> list[dict[str, str]]:
    """``count`` sessions of one new account: its sign-up's and ``count - 1`` sign-ins'."""
    sessions = [_sign_up(base, phone)]
    login = {"phone_number": phone, "password": PASSWORD}
    for _ in range(count - 1):
        response = httpx.post(base + "/api/auth/login", json=login, timeout=30)
        assert response.status_code == 200, response.text
        sessions.append(response.json())
    return sessions


def _spend_budget(base: str, attempts: int) -> None:
    """Fail until refused: every later sign-in from this client is that server's 429."""
    for _ in range(attempts):
        httpx.post(f"{base}/api/auth/login", content=WRONG, headers={"content-type": "application/json"}, timeout=30)
    refused = httpx.post(
        f"{base}/api/auth/login", content=WRONG, headers={"content-type": "application/json"}, timeout=30
    )
    assert refused.status_code == 429, f"{base}: {refused.status_code} {refused.text}"


def _listener(base: str) -> psutil.Process:
    """The process listening on ``base``'s port: with one uvicorn worker, the worker itself."""
    port = int(base.rsplit(":", 1)[1])
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid)
    raise RuntimeError(f"nothing listens on {base}")


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _check(name: str, result: LoadResult, refused: bool) -> None:
    if refused:
        assert result.non_2xx == result.requests, f"{name}: every request must be refused: {result}"
    else:
        assert result.non_2xx == 0, f"{name}: every request must succeed: {result}"


def run(rounds: int, seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in LABELS}
    # The serving worker's CPU per request, and how busy it was: a path whose worker is not near a
    # whole core was held back by something else on the machine (the load generator, Redis, Postgres).
    cpu_us: dict[str, list[float]] = {name: [] for name in LABELS}
    busy: dict[str, list[float]] = {name: [] for name in LABELS}
    with contextlib.ExitStack() as stack:
        settings = stack.enter_context(servers(database_url, redis_url))
        # The reuse grace covers the whole run: parallel body-form refreshes of one token all succeed.
        base = stack.enter_context(api_process(settings, workers=1, REFRESH_REUSE_GRACE_SECONDS="3600"))
        account = _sign_up(base, "0788555001")
        # Rotation writes its session's row thousands of times a second: a session of its own, so the
        # other paths never read a row with a long chain of dead versions (nor does the field).
        rotating = _sign_up(base, "0788555002")
        # The field's rotations: many sessions, each rotated now and then. One session rotated by all 64
        # connections at once (the row above) measures contention on one row, which no client makes.
        sessions = _sessions(base, "0788555004", SESSIONS)
        _spend_budget(base, 6)  # this client's budget spent: every later sign-in is the 429 path
        env = server_env(settings)
        litestar_base = stack.enter_context(uvicorn_process("bench.litestar_builtin_app:create_app", env))
        _spend_budget(litestar_base, 6)
        slowapi_base = None
        if importlib.util.find_spec("slowapi") and importlib.util.find_spec("fastapi"):
            slowapi_base = stack.enter_context(uvicorn_process("bench.slowapi_app:create_app", env))
            _spend_budget(slowapi_base, 6)
        else:
            print("slowapi or fastapi not installed: `pip install slowapi fastapi` for that comparison")
        access = {"Authorization": f"Bearer {account['access_token']}"}
        refresh = {"Authorization": f"Bearer {account['refresh_token']}"}
        rotate = json.dumps({"refresh_token": rotating["refresh_token"]})
        rotate_many = [json.dumps({"refresh_token": session["refresh_token"]}) for session in sessions]
        runs: dict[str, Callable[[], LoadResult]] = {
            "health": lambda: wrk(f"{base}/health", **load),
            "refused": lambda: wrk(f"{base}/api/auth/login", body=WRONG, **load),
            "profile": lambda: wrk(f"{base}/api/auth/profile", headers=access, **load),
            "refresh_header": lambda: wrk(f"{base}/api/auth/refresh", body="", headers=refresh, **load),
            "refresh_body": lambda: wrk(f"{base}/api/auth/refresh", bodies=rotate_many, **load),
            "refresh_body_one": lambda: wrk(f"{base}/api/auth/refresh", body=rotate, **load),
            "litestar_limiter": lambda: wrk(f"{litestar_base}/api/auth/login", body=WRONG, **load),
        }
        if slowapi_base is not None:
            runs["slowapi"] = lambda: wrk(f"{slowapi_base}/api/auth/login", body=WRONG, **load)
        workers = {name: _listener(base) for name in runs}
        workers["litestar_limiter"] = _listener(litestar_base)
        if slowapi_base is not None:
            workers["slowapi"] = _listener(slowapi_base)
        load: dict[str, Any] = {"seconds": seconds, "connections": CONNECTIONS, "threads": THREADS}
        for round_number in range(rounds):
            # Alternate the order, but rotation last: its thousands of commits leave Postgres work
            # (WAL, autovacuum) that slowed whichever path came next.
            others = [name for name in runs if not name.startswith("refresh_body")]
            names = [*(others if round_number % 2 == 0 else reversed(others)), "refresh_body", "refresh_body_one"]
            line = []
            for name in names:
                cpu_before, started = _cpu_seconds(workers[name]), time.perf_counter()
                result = runs[name]()
                cpu = _cpu_seconds(workers[name]) - cpu_before
                cpu_us[name].append(cpu / max(result.requests, 1) * 1e6)
                busy[name].append(cpu / (time.perf_counter() - started))
                _check(name, result, refused=name in ("refused", "litestar_limiter", "slowapi"))
                rates[name].append(result.requests_per_second)
                line.append(f"{name} {result.requests_per_second:.0f}")
            print(f"  round {round_number + 1}: " + ", ".join(line), flush=True)
    result = {name: median(values) for name, values in rates.items() if values}
    result |= {f"{name}:cpu_us": median(values) for name, values in cpu_us.items() if values}
    result |= {f"{name}:busy": median(values) for name, values in busy.items() if values}
    # Each ratio is also taken within each round, then the median of those: on a shared machine
    # whose load drifts, a path and /health a few seconds apart see more alike load than medians
    # of whole columns do.
    for name, values in rates.items():
        if values:
            result[f"{name}/health"] = median(
                [value / health for value, health in zip(values, rates["health"], strict=True)]
            )
    for name, other in (("litestar_limiter", "refused"), ("slowapi", "refused")):
        if rates.get(name):
            result[f"refused/{name}"] = median(
                [mine / theirs for mine, theirs in zip(rates[other], rates[name], strict=True)]
            )
    return result


def failed_sign_in_round_trips(database_url: str | None, redis_url: str | None, attempts: int = 20) -> float:
    """Postgres round trips per failed sign-in (a wrong password for a known number), on the wire."""
    with servers(database_url, redis_url) as settings, RoundTripRelay.to(settings.database_url or "") as relay:
        relayed = relay.url(settings.database_url or "")
        quiet = {
            "AUDIT_WRITER_ENABLED": "false",  # the attempts' audit rows wait in Redis meanwhile
            "ACCOUNT_EVENTS_RELAY_ENABLED": "false",
            "WEBHOOKS_ENABLED": "false",  # its deliverer polls Postgres every second
            "SIGNING_KEYS_REFRESH_SECONDS": "3600",
            "TRUSTED_PROXIES": "127.0.0.1/32",  # every attempt from a client of its own
            "ACCOUNT_MAX_FAILURES": "1000",  # and the number never locked: none refused
        }
        with api_process(_with_database(settings, relayed), workers=1, **quiet) as base:
            _sign_up(base, "0788555003")
            with httpx.Client(base_url=base, timeout=30) as client:

                def fail(n: int) -> None:
                    headers = {"content-type": "application/json", "X-Forwarded-For": f"198.18.1.{n}"}
                    wrong = WRONG.replace("0788123456", "0788555003")
                    answer = client.post("/api/auth/login", content=wrong, headers=headers)
                    assert answer.status_code == 401, answer.text

                for n in range(3):  # each pooled connection prepares the statement once
                    fail(200 + n)
                before = relay.round_trips
                for n in range(attempts):
                    fail(n + 1)
                return (relay.round_trips - before) / attempts


def _with_database(settings: Settings, database_url: str) -> Settings:
    return msgspec.structs.replace(settings, database_url=database_url)


def report(result: dict[str, float]) -> str:
    """Rates are medians of the rounds; each ratio is the median of that ratio taken round by round."""
    lines = [
        "| path | req/s | ÷ `GET /health` | target | worker CPU per request | worker busy |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        if name not in result:
            continue
        target = f"≥ {TARGETS[name]}x" if name in TARGETS else ""
        lines.append(
            f"| {label} | {result[name]:,.0f} | {result[name + '/health']:.2f} | {target} "
            f"| {result[name + ':cpu_us']:.0f} µs | {result[name + ':busy']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"refused login vs Litestar RateLimitMiddleware: {result['refused/litestar_limiter']:.2f}x (target ≥ 2)"
    )
    if "slowapi" in result:
        lines.append(f"refused login vs slowapi: {result['refused/slowapi']:.2f}x (target ≥ 3)")
    return "\n".join(lines)


def main() -> dict[str, float]:
    parser = bench_parser(__doc__, rounds=True)
    parser.set_defaults(rounds=3)
    parser.add_argument("--no-storm", action="store_true", help="leave out the login storm")
    parser.add_argument("--storm-seconds", type=float, default=10)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.database_url, args.redis_url)
    print(
        f"\nmedians of {args.rounds} rounds of {args.seconds:g} s, wrk -t{THREADS} -c{CONNECTIONS}, one uvicorn worker:"
    )
    print(report(result))
    trips = failed_sign_in_round_trips(args.database_url, args.redis_url)
    result["failed_sign_in_round_trips"] = trips
    print(
        f"\nPostgres round trips per failed sign-in (on the wire, writers off): {trips:.2f} "
        "(target: at most 1 before the hash)"
    )
    if not args.no_storm:
        storm = bench_login_storm.run(args.storm_seconds, args.database_url, args.redis_url)
        result["storm_share"] = storm["verified_ratio"]
        result["health_p99_ratio"] = storm["health_p99_ratio"]
        print(
            f"login storm ({storm['cores']:.0f} workers): verified {storm['storm_rps']:.0f} failed sign-ins/s = "
            f"{storm['verified_ratio']:.2f}x of the argon2 ceiling ({storm['ceiling_per_s']:.0f}/s) (target ≥ 0.85); "
            f"{storm['verified_parallel_ratio']:.2f}x of {storm['cores']:.0f} threads verifying side by side"
        )
        print(
            f"/health p99 during the storm {storm['health_storm_p99_ms']:.1f} ms vs idle "
            f"{storm['health_idle_p99_ms']:.1f} ms = {storm['health_p99_ratio']:.1f}x (target ≤ 3)"
        )
    return result


if __name__ == "__main__":
    main()
