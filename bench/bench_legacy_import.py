"""Legacy history import vs a plain COPY of the same rows into the same table; memory while importing.

    python -m bench.bench_legacy_import [--rows 1000000] [--batch-size 5000] [--database-url URL]

A Flask-era source database (the shared schema, ../shared/legacy/flask_schema.sql) gets ``--rows``
login attempts: ~20,000 people whose numbers are typed in the three Flask-era forms, some that are
not numbers, addresses that are sometimes empty or not addresses, some rows without a time. Then,
side by side in one run, into the same scratch target table (migrated to head, so its indexes are
the migrations' own) starting empty each time:

- the import (``app.legacy.importer``, ``--only attempts``): read through the cursor, normalised,
  written in batches;
- a plain COPY (asyncpg ``copy_records_to_table``, same batch size) of exactly the rows the import
  wrote, already in memory: the floor any import of these rows pays;
- the import run again over the full table: what a rerun or a resume costs when nothing is new.

``--rounds`` alternates import and COPY that many times (a shared machine's load moves between
them). Printed: rows/s of each per round, the median ratio import / COPY (target >= 0.5), the rerun,
and this process's RSS growth in the first and the second half of the first import (streamed: the
second half grows by about nothing).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.settings import PROJECT_ROOT, Settings
from app.db import migrations
from app.legacy.importer import ImportOptions, run_import
from app.legacy.rules import HISTORY_COLUMNS
from bench.common import bench_parser, servers

SEED = """
INSERT INTO login_attempts (phone_number, success, ip_address, created_at)
SELECT CASE g % 10 WHEN 0 THEN 'garbage' || (g % 7)
                   WHEN 1 THEN '250788' || lpad((g % 20000)::text, 6, '0')
                   WHEN 2 THEN '0788' || lpad((g % 20000)::text, 6, '0')
                   WHEN 3 THEN '0788' || lpad((g % 20000)::text, 6, '0')
                   ELSE '+250788' || lpad((g % 20000)::text, 6, '0') END,
    g % 4 = 0,
    CASE g % 8 WHEN 0 THEN '' WHEN 1 THEN 'unknown' WHEN 2 THEN NULL WHEN 3 THEN '10.0.0.1'
               ELSE '41.186.' || (g % 250) || '.' || (g % 200) END,
    CASE WHEN g % 5000 = 0 THEN NULL ELSE timestamp '2023-01-01' + g * interval '7 seconds' END
FROM generate_series(1, $1) AS g
"""


def schema_sql() -> str:
    for parent in PROJECT_ROOT.parents:
        path = parent / "shared" / "legacy" / "flask_schema.sql"
        if path.is_file():
            return path.read_text()
    raise SystemExit("shared/legacy/flask_schema.sql is not beside the repository: the benchmark needs it")


def dsn(settings: Settings) -> str:
    assert settings.database_url
    return settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class RssSampler:
    """This process's RSS at the import's start, half-way and end (sampled on progress)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.process = psutil.Process(os.getpid())
        self.start = self.process.memory_info().rss
        self.half: int | None = None
        self.peak = self.start
        self._lock = threading.Lock()

    def __call__(self, phase: str, done: int, total: int) -> None:
        rss = self.process.memory_info().rss
        with self._lock:
            self.peak = max(self.peak, rss)
            if self.half is None and done >= total // 2:
                self.half = rss


async def main_async(args: Any, settings: Settings, source: Settings) -> None:
    conn = await asyncpg.connect(dsn(source))
    try:
        await conn.execute(schema_sql())
        started = time.perf_counter()
        await conn.execute(SEED, args.rows)
        await conn.execute("ANALYZE login_attempts")
        print(f"source: {args.rows:,} Flask-era login attempts generated in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()

    options = ImportOptions(source_url=dsn(source), region="RW", only="attempts", batch_size=args.batch_size)
    target = await asyncpg.connect(dsn(settings))
    import_times: list[float] = []
    copy_times: list[float] = []
    try:
        # Round 1 also measures memory (before the COPY's rows are loaded) and the rerun.
        sampler = RssSampler(args.rows)
        started = time.perf_counter()
        report = await run_import(dsn(settings), options, sampler)
        import_times.append(time.perf_counter() - started)
        end_rss = sampler.process.memory_info().rss
        assert report.history_inserted == args.rows, report.history_inserted
        started = time.perf_counter()
        again = await run_import(dsn(settings), options)
        rerun_seconds = time.perf_counter() - started
        assert again.history_inserted == 0

        columns = ", ".join(HISTORY_COLUMNS)
        records = [tuple(r) for r in await target.fetch(f"SELECT {columns} FROM login_attempts ORDER BY event_id")]  # noqa: S608
        for round_number in range(args.rounds):
            if round_number:
                await empty(target)
                started = time.perf_counter()
                await run_import(dsn(settings), options)
                import_times.append(time.perf_counter() - started)
            await empty(target)
            started = time.perf_counter()
            for i in range(0, len(records), args.batch_size):
                await target.copy_records_to_table(
                    "login_attempts", records=records[i : i + args.batch_size], columns=HISTORY_COLUMNS
                )
            copy_times.append(time.perf_counter() - started)
    finally:
        await target.close()

    mib = 1024 * 1024
    half = sampler.half or end_rss
    print(f"rows: {args.rows:,}, batch size {args.batch_size:,}, {args.rounds} alternating round(s)")
    for i, (import_seconds, copy_seconds) in enumerate(zip(import_times, copy_times, strict=True), 1):
        print(
            f"  round {i}: legacy import {args.rows / import_seconds:,.0f} rows/s ({import_seconds:.1f} s),"
            f" plain COPY {args.rows / copy_seconds:,.0f} rows/s ({copy_seconds:.1f} s),"
            f" ratio {copy_seconds / import_seconds:.2f}x"
        )
    ratio = statistics.median(c / i for i, c in zip(import_times, copy_times, strict=True))
    print(f"import / COPY (median of the rounds): {ratio:.2f}x (target >= 0.5x)")
    print(f"rerun, nothing new: {args.rows / rerun_seconds:,.0f} rows/s ({rerun_seconds:.1f} s)")
    print(
        f"import RSS growth: first half {(half - sampler.start) / mib:+.1f} MiB,"
        f" second half {(end_rss - half) / mib:+.1f} MiB (peak {(sampler.peak - sampler.start) / mib:+.1f} MiB)"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


async def empty(target: asyncpg.Connection) -> None:
    await target.execute("TRUNCATE login_attempts")
    await target.execute("VACUUM login_attempts")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating import / COPY rounds (the machine is noisy)")
    args = parser.parse_args()
    with servers(args.database_url, args.redis_url) as settings:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        with migrations.scratch_database(settings) as source:
            asyncio.run(main_async(args, settings, source))


if __name__ == "__main__":
    main()
