"""Retention on the partitioned table: a month dropped whole vs the same rows deleted in batches.

    python -m bench.bench_audit_prune [--rows 1000000] [--batch-size 10000] [--database-url URL]

In a scratch database migrated to head, ``--rows`` attempts are generated (bench/audit_data.py:
30 days ending 2026-11-30, so the last day of October and most of November) into monthly
partitions, and the hourly rollups filled. Then, side by side in one run:

(a) ``prune`` with a cutoff just before December, past every row: October dropped whole, and
    November's rows deleted in batches of ``--batch-size`` (each batch its own transaction,
    subtracting from the rollups): rows/s of the batches;
(b) the rows generated again, and ``prune`` with the cutoff at December 1st: both partitions
    detached and dropped whole.

The ratio (a)/(b) in time is what aligning retention with partition bounds saves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.audit.history.prune import prune
from app.audit.pipeline.partitions import month_start, next_month, partition_name
from app.core.postgres import plain_dsn
from bench.audit_data import END, generate, monthly_partitions
from bench.common import servers


async def measure(dsn: str, rows: int, batch_size: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await monthly_partitions(conn)  # the data's months as partitions of their own
        month_end = next_month(month_start(END))
        inside = month_end - datetime.timedelta(microseconds=1)
        boundary = partition_name(month_start(END))
        timings = {}
        for label, cutoff in (("(a) batches inside the month", inside), ("(b) whole partitions", month_end)):
            await conn.execute("TRUNCATE login_attempts, login_attempts_hourly")
            await generate(conn, rows, log=lambda _: None)
            await monthly_partitions(conn)  # (b) dropped the month: make it again
            in_boundary = await conn.fetchval(f"SELECT count(*) FROM {boundary}")  # noqa: S608 (a constant)
            started = time.perf_counter()
            done = await prune(conn, cutoff, batch_size=batch_size)
            elapsed = time.perf_counter() - started
            timings[label] = elapsed
            batched = f"{in_boundary / elapsed:,.0f} rows/s in batches, " if done.batches > 1 else ""
            print(
                f"{label:<32} {done.deleted:>10,} rows in {elapsed:8.2f} s ({batched}{done.batches:,} batches, "
                f"dropped {', '.join(done.dropped)})",
                flush=True,
            )
        (a, b) = timings.values()
        print(f"dropping whole partitions took {b / a:.4f}x the time of deleting the same rows in batches")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with servers(args.database_url, None) as settings:
        assert settings.database_url
        asyncio.run(measure(plain_dsn(settings.database_url), args.rows, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
