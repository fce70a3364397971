"""``make bench``: run every benchmark and rewrite docs/benchmarks.md with what they printed.

Each benchmark measures its figures side by side in one run and prints them as ratios; this runner
only runs them one after the other (never in parallel: they would measure each other) and records
their output. ``--quick`` shortens every run, for a smoke test; ``--only NAME`` runs one.

    python -m bench [--quick] [--only refusal] [--database-url URL] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    title: str
    target: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    image: str | None = None
    extra: str | None = None
    servers: tuple[str, ...] = ("database", "redis")  # which --*-url options it takes


BENCHMARKS = (
    Benchmark(
        "refusal",
        "bench.bench_login_refusal",
        "Refused (429) login path vs GET /health, and vs Litestar's RateLimitMiddleware",
        "429 path >= 0.8x of /health",
        quick_args=("--rounds", "1", "--seconds", "2"),
    ),
    Benchmark(
        "cluster",
        "bench.bench_cluster",
        "Refused (429) login path on a 3-master Redis Cluster vs one Redis; script calls/s per master",
        "cluster 429 path >= 0.8x of one Redis",
        quick_args=("--rounds", "1", "--seconds", "2"),
        servers=("database",),  # starts its own Redis: the cluster nodes' binary and options
    ),
    Benchmark(
        "limiter-memory",
        "bench.bench_limiter_memory",
        "Redis memory per tracked client (100,000 clients, budget full)",
        "<= 512 bytes per client",
        quick_args=("--clients", "10000"),
        servers=("redis",),
    ),
    Benchmark(
        "storm",
        "bench.bench_login_storm",
        "Login storm: verified failures vs the argon2 ceiling; /health p99 during the storm vs idle",
        "verified failures close to the ceiling; /health p99 stays low",
        quick_args=("--seconds", "3"),
        image="img/login-latency.png",
    ),
    Benchmark(
        "memory-attack",
        "bench.bench_memory_attack",
        "API worker RSS before and after a 5-minute attack",
        "levels off (second-half growth near zero)",
        quick_args=("--seconds", "20"),
        image="img/worker-rss.png",
    ),
    Benchmark(
        "audit-ingest",
        "bench.bench_audit_ingest",
        "Audit ingest (stream -> table) vs raw COPY; partitioned vs unpartitioned; lag at 1,000 events/s",
        "ingest >= 0.6x of COPY; partitioned >= 0.9x of unpartitioned; p99 lag < 1 s",
        quick_args=("--events", "20000"),
        image="img/audit-lag.png",
    ),
    Benchmark(
        "audit-overhead",
        "bench.bench_audit_overhead",
        "The login path with auditing on vs off (verified sign-in and refused path)",
        "audit on >= 0.9x of audit off",
        quick_args=("--rounds", "1", "--seconds", "2"),
    ),
    Benchmark(
        "request-paths",
        "bench.bench_request_paths",
        "The hot paths side by side: GET /health, refused login, signed-in GET, both refresh forms; "
        "Litestar's and slowapi's limiters",
        "profile and refresh header >= 0.5x /health, body >= 0.25x; 429 >= 1.5x /health, "
        ">= 2x Litestar's limiter, >= 3x slowapi",
        quick_args=("--rounds", "1", "--seconds", "2"),
    ),
    Benchmark(
        "audit-queries",
        "bench.bench_audit_queries",
        "Security team queries on 10 million rows; summaries; export throughput",
        "each filtered page p95 < 50 ms; summary counts < 200 ms; export >= 100,000 rows/s",
        quick_args=("--rows", "200000"),
        extra="EXPLAIN plans: [audit-explain.md](audit-explain.md).",
        servers=("database",),
    ),
    Benchmark(
        "audit-flood",
        "bench.bench_audit_flood",
        "Sign-in p99 during a flood of security-team reads vs idle",
        "flood p99 <= 2x idle; no 500",
        quick_args=("--sign-ins", "20", "--rounds", "1", "--warmup", "2"),
    ),
    Benchmark(
        "legacy-import",
        "bench.bench_legacy_import",
        "Legacy history import vs a plain COPY of the same rows (1 million rows); memory while importing",
        "import >= 0.5x of COPY; RSS flat in the second half",
        quick_args=("--rows", "100000", "--rounds", "1"),
    ),
    Benchmark(
        "audit-prune",
        "bench.bench_audit_prune",
        "Retention: a month dropped whole vs the same rows deleted in batches (1 million rows)",
        "dropping whole partitions far cheaper than batches",
        quick_args=("--rows", "100000"),
        servers=("database",),
    ),
)


def machine() -> str:
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    )


def run_one(bench: Benchmark, quick: bool, urls: dict[str, str]) -> tuple[str, float, int]:
    if not (ROOT / (bench.module.replace(".", "/") + ".py")).exists():
        return "(not present in this checkout)", 0.0, 0
    given = [arg for name in bench.servers if name in urls for arg in (f"--{name}-url", urls[name])]
    command = [sys.executable, "-m", bench.module, *(bench.quick_args if quick else bench.args), *given]
    print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    print(completed.stdout, end="", flush=True)
    if completed.returncode:
        print(completed.stderr[-3000:], file=sys.stderr)
    output = completed.stdout.strip() or completed.stderr.strip()[-2000:]
    return output, elapsed, completed.returncode


def write_doc(results: list[tuple[Benchmark, str, float, int]], quick: bool) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Every figure is a ratio",
        "measured side by side in one run, because absolute times on shared 2-core machines mean little.",
        "",
        f"Last run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}"
        + (" — **quick mode** (shortened runs, smoke test only)" if quick else "")
        + ".",
        "",
        "| benchmark | target | status |",
        "|---|---|---|",
    ]
    for bench, _, elapsed, code in results:
        status = "ran" if code == 0 else f"failed (exit {code})"
        lines.append(f"| [{bench.title}](#{bench.name}) | {bench.target} | {status}, {elapsed:.0f} s |")
    for bench, output, _, _ in results:
        lines += ["", f'<a id="{bench.name}"></a>', f"## {bench.title}", "", f"Target: {bench.target}.", ""]
        lines += [f"`python -m {bench.module}`", "", "```", output, "```"]
        if bench.image and (DOC.parent / bench.image).exists():
            lines += ["", f"![{bench.title}]({bench.image})"]
        if bench.extra:
            lines += ["", bench.extra]
    notes = DOC.parent / "benchmarks-notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    DOC.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark and rewrite docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="shortened runs (smoke test)")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHMARKS])
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    urls = {name: url for name, url in (("database", args.database_url), ("redis", args.redis_url)) if url}
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    results = [(bench, *run_one(bench, args.quick, urls)) for bench in chosen]
    if not args.only:
        write_doc(results, args.quick)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return max((code for *_, code in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
