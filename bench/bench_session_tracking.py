"""What keeping each session's last use costs the refresh path: tracking on vs off, in one run.

Two uvicorn processes (one worker each) of the real app on the same Postgres and Redis, one with
``SESSION_LAST_USE_TRACKING=true`` (each refresh also writes the session's last use, address and
user agent to Redis: one pipelined HSET + EXPIRE) and one with it off. Both are driven with the
Flask-era header-form refresh (``Authorization: Bearer <refresh token>``, no body: what the field
clients send) by wrk; each round measures both, in alternating order, and the result is the median
of the rounds' on/off ratios (pairing each round's two measurements cancels most of the drift of a
shared machine's load). At the end the
"on" server's session list shows the benchmark's user agent as the last use, the "off" one's does not.

    python -m bench.bench_session_tracking [--rounds 9] [--seconds 3] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import json

import httpx

from bench.common import bench_parser, median, server_env, servers, uvicorn_process, wrk

TARGET = 0.9
PASSWORD = "Umuganda-Kigali-42"
APP = "app.asgi:create_app_from_env"
USER_AGENT = "bench-refresh"


def _sign_up(base: str, phone: str) -> dict[str, str]:
    body = {"name": "Bench User", "phone_number": phone, "password": PASSWORD, "user_type": "parent"}
    response = httpx.post(base + "/api/auth/register", json=body, timeout=30)
    assert response.status_code == 201, response.text
    data: dict[str, str] = response.json()
    return data


def _last_use_agent(base: str, access_token: str) -> str | None:
    response = httpx.get(base + "/api/auth/sessions", headers={"Authorization": f"Bearer {access_token}"}, timeout=30)
    assert response.status_code == 200, response.text
    agent: str | None = response.json()["sessions"][0]["user_agent"]
    return agent


def run(rounds: int, seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    rates: dict[str, list[float]] = {"on": [], "off": []}
    agents: dict[str, str | None] = {}
    with servers(database_url, redis_url) as settings:
        envs = {
            name: server_env(
                settings,
                REDIS_KEY_PREFIX=f"{settings.redis_key_prefix}{name}:",
                SESSION_LAST_USE_TRACKING="true" if name == "on" else "false",
                AUDIT_WRITER_ENABLED="false",
                ACCOUNT_EVENTS_RELAY_ENABLED="false",
            )
            for name in ("on", "off")
        }
        with uvicorn_process(APP, envs["on"]) as on_base, uvicorn_process(APP, envs["off"]) as off_base:
            bases = {"on": on_base, "off": off_base}
            accounts = {name: _sign_up(base, f"078855{index:04d}") for index, (name, base) in enumerate(bases.items())}
            for round_number in range(rounds):
                line = []
                order = ("on", "off") if round_number % 2 == 0 else ("off", "on")
                for name in order:
                    base = bases[name]
                    result = wrk(
                        f"{base}/api/auth/refresh",
                        seconds=seconds,
                        connections=16,
                        body="",
                        headers={
                            "Authorization": f"Bearer {accounts[name]['refresh_token']}",
                            "User-Agent": USER_AGENT,
                        },
                    )
                    assert result.non_2xx == 0, f"{name}: {result}"
                    rates[name].append(result.requests_per_second)
                    line.append(f"tracking {name} {result.requests_per_second:7.0f} req/s")
                print(f"  round {round_number + 1}: " + "   ".join(line), flush=True)
            for name, base in bases.items():
                agents[name] = _last_use_agent(base, accounts[name]["access_token"])
    assert agents["on"] == USER_AGENT, agents
    assert agents["off"] != USER_AGENT, agents
    result = {f"{name}_rps": median(values) for name, values in rates.items()}
    result["ratio"] = median([on / off for on, off in zip(rates["on"], rates["off"], strict=True)])
    return result


def main() -> dict[str, float]:
    parser = bench_parser(__doc__, rounds=True)
    parser.set_defaults(rounds=9, seconds=3)
    args = parser.parse_args()
    result = run(args.rounds, args.seconds, args.database_url, args.redis_url)
    print(
        f"refresh (header form): tracking on {result['on_rps']:.0f} req/s, off {result['off_rps']:.0f} req/s "
        f"(medians); median of the rounds' ratios {result['ratio']:.2f}x (target >= {TARGET}x)"
    )
    print(json.dumps({key: round(value, 3) for key, value in result.items()}))
    return result


if __name__ == "__main__":
    main()
