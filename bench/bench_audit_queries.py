"""Audit queries at scale: filtered pages (p50/p95) and export throughput over a big login_attempts.

    python -m bench.bench_audit_queries [--rows 10000000] [--database-url URL] [--runs 50]

Generates ``--rows`` realistic rows (bench/audit_data.py: 30 days, ~200k phones, ~50k addresses
with a few heavy /16s, 70% failures) in a scratch database migrated to head, so the indexes are
the migrations' own. Then, through the code the API runs (app/audit/history/: attempts.py, sql.py, export.py):

- each filtered page query ``--runs`` times with varied values (newest page, 100 rows), and a
  second page through the cursor for some of them; p50 / p95 / max in ms against the 50 ms target;
- each query once under EXPLAIN (ANALYZE, BUFFERS), written with the results to ``--explain-out``
  (by default docs/audit-explain.md, and only by a run at full size: a quick run must not replace
  the 10-million-row plans with small-table ones);
- the summary over the last day, week and month (``--summary-runs`` each; no target);
- the export of ``--export-rows`` rows as CSV and as NDJSON: rows/s against the 100,000 target,
  and how much this process's memory grew meanwhile.

The machine's load average is printed before and after: the figures are only as quiet as the box.

Without ``--database-url`` an embedded Postgres starts in a temporary directory (bench/common.py).
``--keep-database NAME`` uses (and keeps) that database on the server instead of a scratch one and
generates rows only when its count differs from ``--rows``: for rerunning the queries quickly.
``--compare-gist`` also times the IP filters with a GiST (inet_ops) index in place of the btree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.audit.history.attempts import fetch_page
from app.audit.history.export import ExportFormat, ExportResult, export_chunks, export_sql
from app.audit.history.filters import PageRequest, parse_page_request
from app.audit.history.rollups import rollup_buckets_sql, rollup_channels_sql
from app.audit.history.sql import page_sql
from app.audit.history.summary import (
    SUMMARY_WORK_MEM,
    buckets_sql,
    channels_sql,
    parse_summary_request,
    phones_sql,
    pin_locked_sql,
    summarise,
    top_ips_sql,
)
from app.audit.pipeline.events import CHANNELS
from app.core.postgres import database_url_with, plain_dsn
from app.core.settings import PROJECT_ROOT, Settings
from app.db import migrations
from bench.audit_data import DAYS, END, HEAVY_NETWORKS, PHONES, generate, monthly_partitions, phone_text
from bench.common import BENCH_SECRET, servers

P95_TARGET_MS = 50.0
FULL_SIZE = 10_000_000
EXPLAIN_DOC = PROJECT_ROOT / "docs" / "audit-explain.md"
EXPORT_TARGET_ROWS_PER_SECOND = 100_000
REGION = "RW"


@dataclass
class Case:
    name: str
    params: list[dict[str, str]]
    second_page: bool = False
    timings_ms: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def line(self) -> str:
        ordered = sorted(self.timings_ms)
        verdict = "ok" if self.p95 < P95_TARGET_MS else "MISSED"
        return (
            f"{self.name:<36} p50 {statistics.median(ordered):6.1f} ms  p95 {self.p95:6.1f} ms  "
            f"max {ordered[-1]:6.1f} ms  rows/page {statistics.mean(self.rows):5.1f}  n={len(ordered):<3} "
            f"[{verdict}: p95 < {P95_TARGET_MS:.0f} ms]"
        )

    @property
    def p95(self) -> float:
        ordered = sorted(self.timings_ms)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)]


@contextlib.contextmanager
def kept_database(database_url: str, name: str) -> Iterator[Settings]:
    """``name`` on the given server, created if missing and migrated to head; never dropped."""

    async def create() -> None:
        conn = await asyncpg.connect(plain_dsn(database_url_with(database_url, "postgres")))
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    settings = Settings.from_env(
        {},
        app_env="test",
        database_url=database_url_with(database_url, name),
        jwt_secret=BENCH_SECRET,
        pin_pepper=BENCH_SECRET[::-1],
        data_dir=tempfile.gettempdir(),
    )
    migrations.upgrade(settings)
    yield settings


# ---- the cases ------------------------------------------------------------------------------------


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def sample_values(conn: Any, rng: random.Random) -> dict[str, list[str]]:
    """Values as an investigator meets them: numbers and addresses seen in the log, and rare ones."""
    seen = await conn.fetch(
        "SELECT phone_number, host(ip_address) AS ip FROM login_attempts TABLESAMPLE SYSTEM (0.2) "
        "WHERE ip_address IS NOT NULL AND phone_number LIKE '+%' LIMIT 2000"
    )
    phones = [row["phone_number"] for row in seen]
    ips = [row["ip"] for row in seen]
    v4 = [
        ip for ip in ips if ":" not in ip and not any(ip.startswith(n.rsplit(".", 2)[0] + ".") for n in HEAVY_NETWORKS)
    ]
    return {
        "phones_seen": phones,
        "phones_any": [phone_text(rng.randrange(PHONES)) for _ in range(200)],
        "ips": ips,
        "heavy_16": [f"{network}/16" for network in HEAVY_NETWORKS],
        "light_16": [f"{ip.rsplit('.', 2)[0]}.0.0/16" for ip in v4],
        "v6_64": [str(ipaddress.ip_network(f"{ip}/64", strict=False)) for ip in ips if ":" in ip],
    }


def cases(values: dict[str, list[str]], runs: int, rng: random.Random) -> list[Case]:
    start = END - datetime.timedelta(days=DAYS)

    def pick(key: str) -> str:
        return rng.choice(values[key])

    def day() -> dict[str, str]:
        since = start + datetime.timedelta(days=rng.randrange(DAYS))
        return {"since": iso(since), "until": iso(since + datetime.timedelta(days=1))}

    def moment() -> str:
        return iso(start + datetime.timedelta(seconds=rng.randrange(DAYS * 86400)))

    half = runs // 2
    return [
        Case("phone (seen in the log)", [{"phone_number": pick("phones_seen")} for _ in range(runs)], second_page=True),
        Case("phone (any of 200k)", [{"phone_number": pick("phones_any")} for _ in range(runs)]),
        Case("ip (one address)", [{"ip": pick("ips")} for _ in range(runs)], second_page=True),
        Case(
            "ip /16 (heavy carrier and light)",
            [{"ip": pick("heavy_16")} for _ in range(half)] + [{"ip": pick("light_16")} for _ in range(runs - half)],
            second_page=True,
        ),
        Case("ip /64 (IPv6)", [{"ip": pick("v6_64")} for _ in range(runs)]),
        Case("one-day range", [day() for _ in range(runs)], second_page=True),
        Case(
            "failures only (newest, and until=T)",
            [{"success": "false"} for _ in range(half)]
            + [{"success": "false", "until": moment()} for _ in range(runs - half)],
            second_page=True,
        ),
        Case(
            "phone + failures + one-day range",
            [{"phone_number": pick("phones_seen"), "success": "false", **day()} for _ in range(runs)],
        ),
        Case("/16 + failures", [{"ip": pick("heavy_16"), "success": "false"} for _ in range(runs)]),
    ]


async def time_case(conn: Any, case: Case) -> None:
    for params in case.params:
        request = parse_page_request({**params, "limit": "100"}, REGION)
        started = time.perf_counter()
        page = await fetch_page(conn, request)
        case.timings_ms.append((time.perf_counter() - started) * 1000)
        case.rows.append(len(page.items))
        if case.second_page and page.next_cursor:
            request = parse_page_request({**params, "limit": "100", "cursor": page.next_cursor}, REGION)
            started = time.perf_counter()
            page = await fetch_page(conn, request)
            case.timings_ms.append((time.perf_counter() - started) * 1000)
            case.rows.append(len(page.items))


def shown(sql: str, args: list[Any]) -> str:
    for n, value in reversed(list(enumerate(args, start=1))):
        sql = sql.replace(f"${n}", repr(str(value)))
    return sql


async def explain(conn: Any, request: PageRequest) -> tuple[str, str]:
    sql, args = page_sql(request)
    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    return shown(sql, args), "\n".join(row[0] for row in plan)


async def explain_others(conn: Any, rows: int, export_rows: int) -> list[tuple[str, str, str]]:
    """Plans (without running them) of the export's COPY query and the summary's statements."""
    span = datetime.timedelta(days=DAYS) * min(1.0, export_rows / rows)
    filters = parse_page_request({"since": iso(END - span), "until": iso(END)}, REGION).filters
    day = parse_summary_request({"since": iso(END - datetime.timedelta(days=1)), "until": iso(END)}, REGION)
    statements = [
        ("export csv (the query inside COPY)", export_sql(filters, "csv")),
        ("export ndjson (the query inside COPY)", export_sql(filters, "ndjson")),
        ("summary, 1 day: buckets from the hourly rollups", rollup_buckets_sql(day) or buckets_sql(day)),
        (
            "summary, 1 day: counts by channel from the hourly rollups",
            rollup_channels_sql(day, CHANNELS) or channels_sql(day),
        ),
        ("summary, 1 day: PIN-locked numbers", pin_locked_sql(day)),
        ("summary, 1 day: top clients", top_ips_sql(day)),
        ("summary, 1 day: top phone numbers", phones_sql(day)),
    ]
    plans = []
    async with conn.transaction():
        await conn.execute(f"SET LOCAL work_mem = '{SUMMARY_WORK_MEM}'")
        await conn.execute("SET LOCAL jit = off")
        for title, (sql, args) in statements:
            plan = await conn.fetch("EXPLAIN " + sql, *args)
            plans.append((title, shown(sql, args), "\n".join(row[0] for row in plan)))
    return plans


# ---- summary --------------------------------------------------------------------------------------

SUMMARY_COUNTS_TARGET_MS = 200
SUMMARY_CASES = (("1 day, hourly", 1, "hour"), ("7 days, hourly", 7, "hour"), ("30 days, daily", 30, "day"))


async def _timed_summary(conn: Any, request: Any, repeat: int) -> tuple[Any, list[float]]:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        async with conn.transaction(isolation="repeatable_read"):
            summary = await summarise(conn, request)
        timings.append((time.perf_counter() - started) * 1000)
    return summary, timings


async def measure_summaries(conn: Any, repeat: int) -> tuple[list[str], int]:
    """The summary as the API runs it (one REPEATABLE READ transaction), over ranges ending at END:
    by default (top lists of 10) and with ``top=0`` (no top lists), the latter against the 200 ms
    target. Then its statements on their own: counts by bucket and by channel (hourly rollups), the
    PIN-locked numbers (their partial index), and the top clients and numbers (the range's rows).
    """
    lines = []
    missed = 0
    for label, days, bucket in SUMMARY_CASES:
        params = {"since": iso(END - datetime.timedelta(days=days)), "until": iso(END), "bucket": bucket}
        request = parse_summary_request(params, REGION)
        counts_only = parse_summary_request({**params, "top": "0"}, REGION)
        summary, timings = await _timed_summary(conn, request, repeat)
        _, quick = await _timed_summary(conn, counts_only, repeat)
        met = statistics.median(quick) < SUMMARY_COUNTS_TARGET_MS
        missed += not met
        verdict = "ok" if met else "ABOVE TARGET"
        lines.append(
            f"summary {label:<16} {summary.totals.attempts:>10,} attempts"
            f"   top=10 median {statistics.median(timings):9.1f} ms"
            f"   top=0 median {statistics.median(quick):7.1f} ms max {max(quick):7.1f} ms"
            f"   [top=0 target < {SUMMARY_COUNTS_TARGET_MS} ms: {verdict}]"
        )
        parts = (
            ("counts by bucket", rollup_buckets_sql(request) or buckets_sql(request)),
            ("counts by channel", rollup_channels_sql(request, CHANNELS) or channels_sql(request)),
            ("PIN-locked numbers", pin_locked_sql(request)),
            ("top clients", top_ips_sql(request)),
            ("top numbers", phones_sql(request)),
        )
        for part, (sql, args) in parts:
            part_timings = []
            for _ in range(repeat):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL work_mem = '{SUMMARY_WORK_MEM}'")
                    await conn.execute("SET LOCAL jit = off")
                    started = time.perf_counter()
                    await conn.fetch(sql, *args)
                    part_timings.append((time.perf_counter() - started) * 1000)
            lines.append(
                f"  {label:<16} {part:<20} median {statistics.median(part_timings):9.1f} ms"
                f"   max {max(part_timings):9.1f} ms"
            )
    return lines, missed


# ---- export ---------------------------------------------------------------------------------------


async def measure_export(dsn: str, rows_total: int, export_rows: int, fmt: ExportFormat) -> tuple[str, float]:
    """Export about ``export_rows`` rows (a time range of that size) and discard them."""
    span = datetime.timedelta(days=DAYS) * min(1.0, export_rows / rows_total)
    params = {"until": iso(END), "since": iso(END - span)}
    filters = parse_page_request(params, REGION).filters
    conn = await asyncpg.connect(dsn)
    result = ExportResult()
    size = 0

    @contextlib.asynccontextmanager
    async def connect() -> Any:
        async with conn.transaction():
            yield conn

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        async for chunk in export_chunks(connect, filters, fmt, result):
            size += len(chunk)
    finally:
        await conn.close()
    elapsed = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    rate = result.rows / elapsed
    verdict = "ok" if rate >= EXPORT_TARGET_ROWS_PER_SECOND else "MISSED"
    line = (
        f"export {fmt:<6} {result.rows:>10,} rows in {elapsed:5.2f} s = {rate:>9,.0f} rows/s  "
        f"{size / elapsed / 1e6:5.1f} MB/s  peak RSS +{grown / 1024:.1f} MiB   "
        f"[{verdict}: >= {EXPORT_TARGET_ROWS_PER_SECOND:,} rows/s]"
    )
    return line, rate


# ---- the run --------------------------------------------------------------------------------------


async def run(settings: Settings, args: argparse.Namespace, log: Callable[[str], None]) -> int:
    assert settings.database_url
    dsn = plain_dsn(settings.database_url)
    conn = await asyncpg.connect(dsn)
    report: list[str] = []
    missed = 0
    try:
        count = await conn.fetchval("SELECT count(*) FROM login_attempts")
        generation = "reused"
        if count != args.rows:
            await conn.execute("TRUNCATE login_attempts, login_attempts_hourly RESTART IDENTITY")
            await monthly_partitions(conn)
            started = time.perf_counter()
            await generate(conn, args.rows, log=log)
            generation = f"{time.perf_counter() - started:.0f} s"
        # A partitioned table's own size is 0: its partitions hold the rows and indexes.
        table_bytes = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('login_attempts')"
        )
        rollup_bytes = await conn.fetchval("SELECT pg_total_relation_size('login_attempts_hourly')")
        size = f"{table_bytes / 2**20:,.0f} MiB"
        storage = (
            f"on disk: {table_bytes / args.rows:,.0f} bytes per attempt (rows + indexes), rollups "
            f"{rollup_bytes / 2**20:,.1f} MiB ({rollup_bytes / args.rows:,.2f} bytes per attempt)"
        )
        log(storage)
        report.append(storage)
        version = await conn.fetchval("SHOW server_version")
        log(f"login_attempts: {args.rows:,} rows, {size} with indexes (generation: {generation}); Postgres {version}")
        log(f"load average before the measurements: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        await conn.execute("SET plan_cache_mode = force_custom_plan")  # as app/audit/query.read_transaction does

        rng = random.Random(args.seed)
        values = await sample_values(conn, rng)
        all_cases = cases(values, args.runs, rng)
        explained: list[tuple[str, str, str]] = []
        for case in all_cases:
            await time_case(conn, case)
            line = case.line()
            log(line)
            report.append(line)
            missed += case.p95 >= P95_TARGET_MS
            request = parse_page_request({**case.params[0], "limit": "100"}, REGION)
            explained.append((case.name, *await explain(conn, request)))

        summary_lines, summary_missed = await measure_summaries(conn, args.summary_runs)
        for line in summary_lines:
            log(line)
            report.append(line)
        missed += summary_missed

        for fmt in ("csv", "ndjson"):
            line, rate = await measure_export(dsn, args.rows, args.export_rows, fmt)  # type: ignore[arg-type]
            log(line)
            report.append(line)
            missed += rate < EXPORT_TARGET_ROWS_PER_SECOND
        explained += await explain_others(conn, args.rows, args.export_rows)

        if args.compare_gist:
            report += await compare_gist(conn, all_cases, log, explained)
    finally:
        await conn.close()

    load = f"load average after the measurements: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    log(load)
    report.append(load)
    if args.explain_out:
        write_report(Path(args.explain_out), args, report, explained, size, version, generation)
        log(f"plans written to {args.explain_out}")
    log("all targets met" if not missed else f"{missed} target(s) missed")
    return 1 if missed else 0


async def compare_gist(
    conn: Any, all_cases: list[Case], log: Callable[[str], None], explained: list[tuple[str, str, str]]
) -> list[str]:
    """The IP cases again with a GiST (inet_ops) index instead of the btree (in a transaction, undone)."""
    lines = []
    with contextlib.suppress(Undo):
        async with conn.transaction():
            started = time.perf_counter()
            await conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
            await conn.execute("DROP INDEX ix_login_attempts_ip_created_at_id")
            await conn.execute("CREATE INDEX ix_bench_ip_gist ON login_attempts USING gist (ip_address inet_ops)")
            await conn.execute("ANALYZE login_attempts")
            lines.append(
                f"GiST (inet_ops) index built in {time.perf_counter() - started:.0f} s, in place of the btree:"
            )
            log(lines[-1])
            for case in all_cases:
                if "ip" not in case.name and "/16" not in case.name:
                    continue
                again = Case(f"GiST: {case.name}", case.params, case.second_page)
                await time_case(conn, again)
                lines.append(again.line())
                log(lines[-1])
                request = parse_page_request({**case.params[0], "limit": "100"}, REGION)
                explained.append((again.name, *await explain(conn, request)))
            raise Undo  # the btree comes back
    await conn.execute("ANALYZE login_attempts")
    return lines


class Undo(Exception):
    """Rolls the GiST experiment back."""


def write_report(
    path: Path,
    args: argparse.Namespace,
    report: list[str],
    explained: list[tuple[str, str, str]],
    size: str,
    version: str,
    generation: str,
) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Audit queries: measured plans",
        "",
        "Written by `python -m bench.bench_audit_queries` "
        f"(`--rows {args.rows} --runs {args.runs} --export-rows {args.export_rows}`) on {now}: "
        f"{os.cpu_count()} CPUs, {platform.machine()}, Postgres {version}, login_attempts {size} "
        f"with its indexes (generation and indexing: {generation}). Page queries go through "
        "`app/audit/history/attempts.py` on one asyncpg connection with `plan_cache_mode = force_custom_plan`, "
        "as the API runs them; times include decoding the rows in Python.",
        "",
        "## Results",
        "",
        "```",
        *report,
        "```",
        "",
        "## Plans",
        "",
        "Page queries: EXPLAIN (ANALYZE, BUFFERS) with the first values of each case, limit 100. Export",
        "and summary statements: EXPLAIN only (their cost is in the results above).",
        "",
    ]
    for title, sql, plan in explained:
        lines += [f"### {title}", "", "```sql", sql, "```", "", "```", plan, "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_SIZE)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--runs", type=int, default=50, help="Timed queries per case (varied values).")
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--summary-runs", type=int, default=3, help="Runs of each summary range.")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--explain-out", help=f"Where to write results and plans (default: {EXPLAIN_DOC} for a run of --rows 10000000)."
    )
    parser.add_argument("--keep-database", default=None, help="Use and keep this database (needs --database-url).")
    parser.add_argument("--compare-gist", action="store_true")
    args = parser.parse_args(argv)
    if args.explain_out is None and args.rows >= FULL_SIZE:
        args.explain_out = str(EXPLAIN_DOC)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.keep_database:
        if not args.database_url:
            parser.error("--keep-database needs --database-url")
        with kept_database(args.database_url, args.keep_database) as settings:
            return asyncio.run(run(settings, args, log))
    with servers(args.database_url, None) as settings:
        return asyncio.run(run(settings, args, log))


if __name__ == "__main__":
    sys.exit(main())
