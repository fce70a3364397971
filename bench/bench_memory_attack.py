"""API worker memory (RSS) before and after a sustained attack: it must level off, not grow.

One worker; the attack mixes refused attempts from one client with verified failures from ever-new
simulated clients (so limiter keys, audit events and hashing all keep happening). RSS is sampled
every few seconds and plotted to docs/img/worker-rss.png.

    python -m bench.bench_memory_attack [--seconds 300] [--database-url ...] [--redis-url ...]
"""

from __future__ import annotations

import json
import threading
import time

import psutil

from bench.common import api_process, bench_parser, save_plot, servers, wrk

WRONG = json.dumps({"phone_number": "0788123456", "password": "Wrong-Password-77"})


def worker_rss(port: str) -> int:
    """RSS of the uvicorn process serving ``port`` (with one worker, the serve process itself)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            return int(process.memory_info().rss)
    raise RuntimeError("API process not found")


def run(seconds: float, database_url: str | None, redis_url: str | None) -> dict[str, float]:
    samples: list[tuple[float, int]] = []
    with (
        servers(database_url, redis_url) as settings,
        api_process(settings, workers=1, TRUSTED_PROXIES="127.0.0.1/32") as base,
    ):
        port = base.rsplit(":", 1)[1]
        wrk(f"{base}/health", seconds=2)  # warm up: imports, pools, first hashes
        wrk(f"{base}/api/auth/login", seconds=3, body=WRONG, many_clients=True, connections=8)
        before = worker_rss(port)
        started = time.monotonic()
        samples.append((0.0, before))
        done = threading.Event()

        def attack() -> None:
            while not done.is_set() and time.monotonic() - started < seconds:
                remaining = seconds - (time.monotonic() - started)
                chunk = max(1, min(10, round(remaining)))
                # Alternate: a refused flood from one client, then verified failures from new clients.
                wrk(f"{base}/api/auth/login", seconds=chunk, body=WRONG, connections=32)
                wrk(f"{base}/api/auth/login", seconds=chunk, body=WRONG, connections=16, many_clients=True)
            done.set()

        thread = threading.Thread(target=attack)
        thread.start()
        while not done.is_set():
            time.sleep(min(5.0, max(1.0, seconds / 60)))
            samples.append((time.monotonic() - started, worker_rss(port)))
        thread.join()
        after = worker_rss(port)
    half = [rss for t, rss in samples if t >= seconds / 2]
    result = {
        "seconds": seconds,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "ratio": after / before,
        # Growth over the second half of the attack: near zero when memory has levelled off.
        "second_half_growth_mb": (max(half) - min(half)) / 2**20 if half else 0.0,
    }
    plot(samples)
    return result


def plot(samples: list[tuple[float, int]]) -> None:
    save_plot(
        "worker-rss",
        [t for t, _ in samples],
        {"RSS": [rss / 2**20 for _, rss in samples]},
        xlabel="seconds into the attack",
        ylabel="API worker RSS (MiB)",
        title="Worker memory during a sustained login attack",
    )


def main() -> dict[str, float]:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    r = run(args.seconds, args.database_url, args.redis_url)
    print(
        f"worker RSS: {r['rss_before_mb']:.1f} MiB before, {r['rss_after_mb']:.1f} MiB after a "
        f"{r['seconds']:.0f} s attack = {r['ratio']:.2f}x; growth over the second half "
        f"{r['second_half_growth_mb']:.1f} MiB"
    )
    return r


if __name__ == "__main__":
    main()
