"""Shared plumbing for the benchmarks: real servers, a real API process, and a load generator.

Figures are ratios measured side by side in one run: the machines are noisy, absolute numbers
mean little. Load comes from ``wrk`` (Debian package ``wrk``) when it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from app.core.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, stop_process
from app.core.settings import Settings
from app.db import migrations

DOCS = Path(__file__).resolve().parent.parent / "docs"
BENCH_SECRET = secrets.token_hex(32)  # APP_ENV=test outside pytest takes real secrets only


@contextlib.contextmanager
def servers(database_url: str | None = None, redis_url: str | None = None) -> Iterator[Settings]:
    """A scratch database (migrated) and a Redis: the given ones, or embedded ones in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="le-bench-") as tmp:
        started: list[EmbeddedPostgres | EmbeddedRedis] = []
        try:
            if not database_url:
                postgres = EmbeddedPostgres(Path(tmp) / "pg", database="postgres")
                database_url = postgres.start()
                started.append(postgres)
            if not redis_url:
                redis = EmbeddedRedis(Path(tmp) / "redis", appendonly=False)
                redis_url = redis.start()
                started.append(redis)
            base = Settings.from_env(
                {},
                app_env="test",
                database_url=database_url,
                redis_url=redis_url,
                data_dir=tmp,
                jwt_secret=BENCH_SECRET,
                pin_pepper=BENCH_SECRET[::-1],
                redis_key_prefix=f"le-bench:{os.getpid()}:",
            )
            with migrations.scratch_database(base) as settings:
                migrations.upgrade(settings)
                yield settings
        finally:
            for server in reversed(started):
                server.stop()


def bench_parser(doc: str | None, *, rounds: bool = False) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first line, and the servers it may be given;
    with ``rounds``, the alternating wrk rounds (``--rounds``) of ``--seconds`` each."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres server (a scratch database is created on it)")
    parser.add_argument("--redis-url", help="a Redis server (keys go under a run-specific prefix)")
    if rounds:
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--seconds", type=float, default=5)
    return parser


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "JWT_SECRET": settings.jwt_secret or "",
        "PIN_PEPPER": settings.pin_pepper or "",
        "SIGNING_KEYS_SECRET": settings.signing_keys_secret or "",
        "DATA_DIR": str(settings.data_dir),
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run a server command with ``--port`` appended; yields its base URL once /health answers.

    Its output goes to a file, not a pipe: nobody reads a pipe while the load runs, and a server
    that logged more than the pipe holds (64 KiB of warnings under a storm) would block on the write.
    """
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=log, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, process, log)
            yield base
        finally:
            stop_process(process, 20)


def api_process(settings: Settings, workers: int = 1, **extra_env: str) -> contextlib.AbstractContextManager[str]:
    """``ladys-essence serve`` in a child process."""
    command = [sys.executable, "-m", "app", "serve", "--workers", str(workers)]
    return serving(command, server_env(settings, **extra_env))


def uvicorn_process(app_ref: str, env: dict[str, str]) -> contextlib.AbstractContextManager[str]:
    """Any ASGI app factory under uvicorn, one worker."""
    return serving([sys.executable, "-m", "uvicorn", app_ref, "--factory", "--log-level", "warning"], env)


def save_plot(
    name: str,
    xs: list[float],
    series: dict[str, list[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> None:
    """A small line chart in docs/img/<name>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for label, ys in series.items():
        axis.plot(xs, ys, marker="o" if len(xs) < 20 else ".", label=label)
    if logx:
        axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(bottom=0)
    axis.set_title(title)
    if len(series) > 1:
        axis.legend()
    axis.grid(alpha=0.3)
    (DOCS / "img").mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(DOCS / "img" / f"{name}.png", dpi=110)


def wait_healthy(
    base: str, process: subprocess.Popen[str], log: IO[str] | None = None, path: str = "/health", timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else ""
            if log is not None:
                log.seek(0)
                output = log.read()[-4000:]
            raise RuntimeError(f"server exited: {output}")
        try:
            if httpx.get(base + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


@dataclass
class LoadResult:
    requests_per_second: float
    requests: int
    non_2xx: int
    latency_p50_ms: float
    latency_p99_ms: float


WRK_POST = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{headers}
"""

# Each request from another simulated client (198.18.0.0/15, the benchmarking range), for a server
# started with TRUSTED_PROXIES=127.0.0.1/32.
WRK_MANY_CLIENTS = """
math.randomseed(os.time())
request = function()
  local a, b, c = math.random(18, 19), math.random(0, 255), math.random(1, 254)
  wrk.headers["X-Forwarded-For"] = "198." .. a .. "." .. b .. "." .. c
  if many_numbers then
    -- another phone number each time too, so no per-number budget refuses: every guess is verified
    wrk.body = '{"phone_number": "0788' .. math.random(100000, 999999) .. '", "password": "Wrong-Password-77"}'
  end
  return wrk.format()
end
"""

# Each request from the next address of a fixed list (``clients = {...}`` is prepended), round robin:
# clients whose budgets were spent beforehand, so every request takes the refused path.
WRK_CLIENT_LIST = """
local next_client = 0
request = function()
  next_client = next_client % #clients + 1
  wrk.headers["X-Forwarded-For"] = clients[next_client]
  return wrk.format()
end
"""

# POST the bodies in turn; each thread starts at a place of its own, so two threads rarely send the
# same body at the same moment.
WRK_BODY_LIST = """
local next_body = 0
setup = function(thread)
  thread:set("offset", math.random(1, 1000))
end
request = function()
  next_body = next_body + 1
  return wrk.format(nil, nil, nil, bodies[(next_body + (offset or 0)) % #bodies + 1])
end
"""


def wrk(
    url: str,
    *,
    seconds: float = 5,
    connections: int = 32,
    threads: int = 1,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    many_clients: bool = False,
    many_numbers: bool = False,
    clients: Sequence[str] = (),
    bodies: Sequence[str] = (),
) -> LoadResult:
    """Drive ``url`` with wrk for a bounded time (loopback only) and parse its summary.

    ``many_clients``: each request from a random address; ``clients``: from these addresses in turn
    (``X-Forwarded-For``, for a server started with ``TRUSTED_PROXIES=127.0.0.1/32``); ``bodies``:
    POST these JSON bodies in turn (each of wrk's threads goes through the list from its own start).
    """
    if sum(map(bool, (many_clients, clients, bodies))) > 1:
        raise ValueError("many_clients, a list of clients or a list of bodies: one of them")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian) to run the load benchmarks")
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(WRK_POST.format(body=body, headers=header_lines))
        else:
            script.write(header_lines)
        if many_clients:
            script.write(f"many_numbers = {'true' if many_numbers else 'false'}\n" + WRK_MANY_CLIENTS)
        if clients:
            script.write("clients = {" + ", ".join(f'"{client}"' for client in clients) + "}\n" + WRK_CLIENT_LIST)
        if bodies:
            script.write(WRK_POST.format(body="", headers=header_lines))
            script.write("bodies = {" + ", ".join(f"[[{one}]]" for one in bodies) + "}\n" + WRK_BODY_LIST)
    try:
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        Path(script.name).unlink()
    return parse_wrk(output)


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    p50 = re.search(r"50%\s+([\d.]+\w+)", output)
    p99 = re.search(r"99%\s+([\d.]+\w+)", output)
    return LoadResult(
        requests_per_second=rps,
        requests=total,
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        latency_p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        latency_p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
