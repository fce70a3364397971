"""Requests/s of the refused (429) login path against GET /health on the same server, in one run.

Also Litestar's built-in RateLimitMiddleware (fixed window, Redis store) on the same machine, as a
baseline. Our 429 path includes the audit event (appended in the same Redis script call) and the
in-process audit writer draining it into Postgres. uvicorn with one worker, wrk on loopback.

    python -m bench.bench_login_refusal [--rounds 5] [--seconds 5] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import json

import httpx

from bench.common import api_process, bench_parser, median, server_env, servers, uvicorn_process, wrk

WRONG = json.dumps({"phone_number": "0788123456", "password": "Wrong-Password-77"})


def run(rounds: int, seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    health: list[float] = []
    refused: list[float] = []
    builtin: list[float] = []
    with servers(database_url, redis_url) as settings, api_process(settings, workers=1) as base:
        for _ in range(6):  # spend this client's budget: everything after is the 429 path
            httpx.post(f"{base}/api/auth/login", content=WRONG, headers={"content-type": "application/json"})
        env = server_env(settings)
        with uvicorn_process("bench.litestar_builtin_app:create_app", env) as builtin_base:
            for _ in range(5):
                httpx.post(
                    f"{builtin_base}/api/auth/login", content=WRONG, headers={"content-type": "application/json"}
                )
            for round_number in range(rounds):
                h = wrk(f"{base}/health", seconds=seconds)
                r = wrk(f"{base}/api/auth/login", seconds=seconds, body=WRONG)
                b = wrk(f"{builtin_base}/api/auth/login", seconds=seconds, body=WRONG)
                assert r.non_2xx == r.requests, "every refused-path request must be refused"
                health.append(h.requests_per_second)
                refused.append(r.requests_per_second)
                builtin.append(b.requests_per_second)
                print(
                    f"  round {round_number + 1}: /health {h.requests_per_second:8.0f} req/s   "
                    f"429 path {r.requests_per_second:8.0f} req/s   built-in {b.requests_per_second:8.0f} req/s"
                )
    result = {
        "health_rps": median(health),
        "refused_rps": median(refused),
        "builtin_rps": median(builtin),
    }
    result["ratio_vs_health"] = result["refused_rps"] / result["health_rps"]
    result["ratio_vs_builtin"] = result["refused_rps"] / result["builtin_rps"]
    return result


def main() -> dict[str, float]:
    parser = bench_parser(__doc__, rounds=True)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.database_url, args.redis_url)
    print(
        f"429 path vs /health: {result['ratio_vs_health']:.2f}x (target >= 0.8); "
        f"vs Litestar RateLimitMiddleware: {result['ratio_vs_builtin']:.2f}x  "
        f"(medians of {args.rounds}: {result['refused_rps']:.0f} / {result['health_rps']:.0f} / "
        f"{result['builtin_rps']:.0f} req/s)"
    )
    return result


if __name__ == "__main__":
    main()
