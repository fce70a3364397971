"""How fast the audit writer moves events from the Redis streams into ``login_attempts``.

Side by side in one run, on the same servers and table (medians of ``--repeat`` runs):

(a)  raw COPY: ``copy_records_to_table`` of all N rows in one call, the ceiling for this table;
(a') COPY in statements of ``audit_batch_size`` rows, what Postgres does at the writer's batch size;
(b)  sustained ingest: N events pre-filled into the shard streams (pipelined XADDs), then the
     writer drains them (read, decode, insert, acknowledge + delete); target (b)/(a) >= 0.6;
     with the CPU time the writer, Postgres and Redis each spent per event (the two cores' budget);
(b') the same drain with each insert method, once, to justify the default;
(b'') the same drain by ``--writers`` writer processes (``python -m app.audit.pipeline.worker``) sharing the
     group, as an API with that many workers runs them; timed from the moment all have joined;
(d)  partitioned vs unpartitioned, same run: the writer's insert of ``audit_batch_size``-row batches
     (COPY + the hourly rollups in one transaction) into the partitioned table, against the plain
     batch COPY the writer did before into the table as migration 0007 left it (a second scratch
     database), interleaved batch by batch; target (d) >= 0.9;
(c)  lag at a steady 1,000 events/s for ``--lag-seconds``: the publisher and a writer in one event
     loop (as in an API process); per event, the row's insert time (``clock_timestamp()`` default of
     a column the benchmark adds to its scratch table) minus the event's ``created_at``; target p99 < 1 s.

    python bench/bench_audit_ingest.py [--events 200000] [--database-url URL] [--redis-url URL] [--only-partitioning]

Without URLs an embedded Postgres and Redis are started in a temporary directory. Either way the
run uses a scratch database (created, migrated, dropped) and its own Redis key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import msgspec
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.audit.pipeline.events import STREAM_FIELD, LoginEvent, new_event, stream_fields
from app.audit.pipeline.metrics import GROUP, AuditMetrics, unwritten_events
from app.audit.pipeline.publisher import AuditPublisher
from app.audit.pipeline.store import COLUMNS, INSERT_METHODS, InsertMethod, _records, insert_events
from app.audit.pipeline.writer import AuditWriter
from app.core.gc import freeze_startup_heap
from app.core.postgres import plain_dsn
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import PROJECT_ROOT, Settings, asyncpg_url
from app.db import migrations
from bench.common import servers

RATIO_TARGET = 0.6
PARTITIONED_TARGET = 0.9
LAG_P99_TARGET = 1.0
PREFILL_CHUNK = 1000
PREFILL_SCRIPT = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end return #ARGV"


def synthetic_events(count: int) -> list[LoginEvent]:
    """Realistic rows: mostly failures from a few thousand addresses, a browser-sized user agent."""
    return [
        new_event(
            phone_number=f"+2507{88000000 + n % 900_000}",
            success=n % 4 == 0,
            reason="ok" if n % 4 == 0 else "invalid_credentials",
            auth_method="password" if n % 3 else "pin",
            user_id=n if n % 4 == 0 else None,
            ip_address=f"41.{n % 200}.{(n // 200) % 20}.{n % 250 + 1}",
            user_agent="Mozilla/5.0 (Linux; Android 12; TECNO KG5) AppleWebKit/537.36 Chrome/120.0 Mobile",
            request_id=f"req-{n:012d}",
        )
        for n in range(count)
    ]


def bench_event(n: int) -> LoginEvent:
    return new_event(
        phone_number=f"+25078{n:07d}",
        success=False,
        reason="invalid_credentials",
        auth_method="pin",
        ip_address=f"41.0.{n % 200}.1",
    )


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of each Postgres process on this machine (none if the server is remote)."""
    seconds = {}
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
    return seconds


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def fmt(rate: float) -> str:
    return f"{rate:>10,.0f} rows/s"


class Bench:
    def __init__(self, settings: Settings, events: int, repeat: int) -> None:
        assert settings.database_url
        self.settings = settings
        self.dsn = plain_dsn(settings.database_url)
        self.events = events
        self.repeat = repeat
        self.keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
        self.achieved_rate = 0.0
        self.drain_cpu: dict[float, dict[str, float]] = {}  # rate of a drain -> CPU µs per event
        self.postgres_local = False

    async def truncate(self, conn: asyncpg.Connection) -> None:
        rollups = await conn.fetchval("SELECT to_regclass('login_attempts_hourly') IS NOT NULL")
        await conn.execute("TRUNCATE login_attempts, login_attempts_hourly" if rollups else "TRUNCATE login_attempts")
        await conn.execute("CHECKPOINT")  # each run starts from the same WAL state

    async def runs(self, label: str, once: Callable[[], Awaitable[float]], repeat: int | None = None) -> float:
        rates = [await once() for _ in range(repeat or self.repeat)]
        median = statistics.median(rates)
        print(f"{label:<38}{fmt(median)}   runs: {', '.join(f'{rate:,.0f}' for rate in rates)}", flush=True)
        return median

    async def raw_copy(self, conn: asyncpg.Connection, chunk: int | None) -> float:
        records = _records(synthetic_events(self.events))
        await self.truncate(conn)
        started = time.perf_counter()
        step = chunk or len(records)
        for first in range(0, len(records), step):
            await conn.copy_records_to_table("login_attempts", records=records[first : first + step], columns=COLUMNS)
        return len(records) / (time.perf_counter() - started)

    async def partitioned_vs_unpartitioned(self, flat_dsn: str) -> float:
        """(d): the batches one writer commits, into the partitioned table and into the one before it.

        Interleaved batch by batch (the order alternating), each timed on its own: on a shared
        machine whose load drifts by the second, both sides then see the same load.
        """
        flat = await asyncpg.connect(flat_dsn)
        partitioned = await asyncpg.connect(self.dsn)
        size = self.settings.audit_batch_size
        ratios, rates = [], {False: [], True: []}
        try:
            for _ in range(self.repeat):
                events = synthetic_events(self.events)
                elapsed = {False: 0.0, True: 0.0}
                await self.truncate(flat)
                await self.truncate(partitioned)
                for number, first in enumerate(range(0, len(events), size)):
                    batch = events[first : first + size]
                    for kind in (False, True) if number % 2 else (True, False):
                        started = time.perf_counter()
                        if kind:
                            await insert_events(partitioned, batch, "copy")  # COPY + rollups, one transaction
                        else:
                            await flat.copy_records_to_table("login_attempts", records=_records(batch), columns=COLUMNS)
                        elapsed[kind] += time.perf_counter() - started
                for kind in (False, True):
                    rates[kind].append(len(events) / elapsed[kind])
                ratios.append(elapsed[False] / elapsed[True])
        finally:
            await flat.close()
            await partitioned.close()
        for kind, label in (
            (False, "(d)  unpartitioned (0007), batch COPY"),
            (True, "(d)  partitioned + rollups, writer"),
        ):
            runs = ", ".join(f"{rate:,.0f}" for rate in rates[kind])
            print(f"{label:<38}{fmt(statistics.median(rates[kind]))}   runs: {runs}", flush=True)
        ratio = statistics.median(ratios)
        verdict = "ok" if ratio >= PARTITIONED_TARGET else "BELOW TARGET"
        shown = ", ".join(f"{r:.3f}" for r in ratios)
        print(
            f"{'ratio (d) partitioned/unpartitioned':<38}{ratio:>10.3f}   target >= {PARTITIONED_TARGET}  {verdict}"
            f"   (median of runs: {shown})",
            flush=True,
        )
        return ratio

    async def prefill(self, redis: Redis, events: list[LoginEvent]) -> None:
        """The entries the limiter's script would have added (``XADD <shard stream> * e <json>``).

        Appended by a Lua loop, a thousand per call: redis-py packing single XADDs would make the
        set-up, not the measurement, the slow part of the run.
        """
        by_stream: dict[str, list[bytes]] = defaultdict(list)
        for index, event in enumerate(events):
            by_stream[self.keys.audit_stream(self.keys.shard_of(f"client-{index}"))].append(
                stream_fields(event)[STREAM_FIELD]
            )
        for stream, payloads in by_stream.items():
            pipe = redis.pipeline(transaction=False)
            for first in range(0, len(payloads), PREFILL_CHUNK):
                pipe.eval(PREFILL_SCRIPT, 1, stream, *payloads[first : first + PREFILL_CHUNK])
            await pipe.execute()

    async def drain(self, conn: asyncpg.Connection, engine: AsyncEngine, method: InsertMethod) -> float:
        redis = create_redis(self.settings)
        try:
            await self.truncate(conn)
            events = synthetic_events(self.events)
            await self.prefill(redis, events)
            writer = AuditWriter(redis, self.keys, engine, self.settings, AuditMetrics(), insert_method=method)
            postgres_before, redis_before, own_before = postgres_cpu(), await redis_cpu(redis), time.process_time()
            started = time.perf_counter()
            await writer.run_until_drained(within_seconds=600)
            elapsed = time.perf_counter() - started
            own, postgres_after, redis_after = time.process_time(), postgres_cpu(), await redis_cpu(redis)
            stored = await conn.fetchval("SELECT count(*) FROM login_attempts")
            assert stored == len(events), f"drained {stored} of {len(events)}"
            rate = len(events) / elapsed
            # Where the two cores went, per event: this process (the writer), Postgres, Redis.
            # (A backend that exited during the drain is missed; the writer's pool keeps its own.)
            postgres = sum(after - postgres_before.get(pid, 0.0) for pid, after in postgres_after.items())
            self.postgres_local = bool(postgres_after)
            self.drain_cpu[rate] = {
                "writer": (own - own_before) / len(events) * 1e6,
                "Postgres": postgres / len(events) * 1e6,
                "Redis": (redis_after - redis_before) / len(events) * 1e6,
            }
            return rate
        finally:
            await redis.aclose()

    async def drain_by_processes(self, conn: asyncpg.Connection, engine: AsyncEngine, writers: int) -> float:
        redis = create_redis(self.settings)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            await self.truncate(conn)
            await self.prefill(redis, synthetic_events(self.events))
            await AuditWriter(redis, self.keys, engine, self.settings).ensure_groups()
            processes = [
                subprocess.Popen(
                    [sys.executable, "-m", "app.audit.pipeline.worker"], cwd=PROJECT_ROOT, env=self.worker_env(n)
                )
                for n in range(writers)
            ]
            probe = self.keys.audit_stream(0)
            while len(await redis.xinfo_consumers(probe, GROUP)) < writers:  # all imported and reading
                await asyncio.sleep(0.01)
            started, remaining = time.perf_counter(), await unwritten_events(redis, self.keys)
            while await unwritten_events(redis, self.keys):
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            stored = await conn.fetchval("SELECT count(*) FROM login_attempts")
            assert stored == self.events, f"drained {stored} of {self.events}"
            return remaining / elapsed
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
            await redis.aclose()

    def worker_env(self, n: int) -> dict[str, str]:
        settings = self.settings
        return {
            **os.environ,
            "APP_ENV": "test",
            "DATABASE_URL": settings.database_url or "",
            "REDIS_URL": settings.redis_url or "",
            "REDIS_KEY_PREFIX": settings.redis_key_prefix,
            "REDIS_SHARDS": str(settings.redis_shards),
            "AUDIT_BATCH_SIZE": str(settings.audit_batch_size),
            "AUDIT_CONSUMER_NAME": f"bench-{os.getpid()}-{n}",
            "DATA_DIR": str(settings.data_dir),
            "JWT_SECRET": settings.jwt_secret or "",
            "PIN_PEPPER": settings.pin_pepper or "",
            "LOG_LEVEL": "WARNING",
        }

    async def lag(self, conn: asyncpg.Connection, engine: AsyncEngine, rate: int, seconds: float) -> list[float]:
        await self.truncate(conn)
        await conn.execute(
            "ALTER TABLE login_attempts ADD COLUMN bench_written_at timestamptz DEFAULT clock_timestamp()"
        )
        redis = create_redis(self.settings)
        metrics = AuditMetrics()
        publisher = AuditPublisher(redis, self.keys, engine, metrics)
        writer = AuditWriter(redis, self.keys, engine, self.settings, metrics)
        writer.start()
        published = 0
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        try:
            started = time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                due = min(int(elapsed / tick) + 1, int(seconds / tick)) * per_tick
                # Events of one tick are published concurrently, as concurrent requests would.
                await asyncio.gather(
                    *(publisher.publish(bench_event(n), f"client-{n % 1000}") for n in range(published, due))
                )
                published = max(published, due)
                await asyncio.sleep(max(0.0, (published / per_tick) * tick - (time.perf_counter() - started)))
            self.achieved_rate = published / (time.perf_counter() - started)
            await writer.run_until_drained(within_seconds=60)
        finally:
            await writer.stop()
            await redis.aclose()
        lags = [
            float(row["lag"])
            for row in await conn.fetch(
                "SELECT extract(epoch FROM bench_written_at - created_at) AS lag FROM login_attempts"
            )
        ]
        await conn.execute("ALTER TABLE login_attempts DROP COLUMN bench_written_at")
        assert len(lags) == published, f"{len(lags)} rows for {published} events"
        return lags


def main(args: argparse.Namespace) -> int:
    # The servers' set-up runs its own event loops, so it stays outside the measuring one.
    with servers(args.database_url, args.redis_url) as settings, migrations.scratch_database(settings) as flat:
        # The table as it was before partitioning, with every column the writer now sends (0007).
        migrations.upgrade(flat, "0007_channel")
        assert flat.database_url
        asyncio.run(
            measure(
                msgspec.structs.replace(settings, redis_key_prefix=f"{settings.redis_key_prefix}audit:"),
                args,
                plain_dsn(flat.database_url),
            )
        )
    return 0


async def measure(settings: Settings, args: argparse.Namespace, flat_dsn: str) -> None:
    bench = Bench(settings, args.events, args.repeat)
    if args.only_partitioning:
        print(f"audit ingest, partitioning only: {args.events:,} events, batch {settings.audit_batch_size}", flush=True)
        await bench.partitioned_vs_unpartitioned(flat_dsn)
        return
    print(
        f"audit ingest: {args.events:,} events, batch {settings.audit_batch_size}, "
        f"{settings.redis_shards} shard streams, medians of {args.repeat} runs",
        flush=True,
    )
    assert settings.database_url
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=4)
    conn = await asyncpg.connect(bench.dsn)
    freeze_startup_heap()  # as the API and `audit worker` processes do once started
    try:
        copy_rate = await bench.runs("(a)  raw COPY, one statement", lambda: bench.raw_copy(conn, None))
        batch_copy_rate = await bench.runs(
            f"(a') COPY, {settings.audit_batch_size}-row statements",
            lambda: bench.raw_copy(conn, settings.audit_batch_size),
        )
        drain_rate = await bench.runs("(b)  writer drain (insert: copy)", lambda: bench.drain(conn, engine, "copy"))
        cpu = bench.drain_cpu[min(bench.drain_cpu, key=lambda rate: abs(rate - drain_rate))]
        print(
            f"{'     CPU per event (median run)':<38}"
            + ", ".join(f"{name} {micros:.1f} µs" for name, micros in cpu.items())
            + ("" if bench.postgres_local else " (no Postgres process on this machine: not counted)"),
            flush=True,
        )
        if not args.skip_methods:
            for method in INSERT_METHODS:
                if method != "copy":
                    await bench.runs(
                        f"(b') writer drain (insert: {method})",
                        lambda method=method: bench.drain(conn, engine, method),  # type: ignore[misc]
                        repeat=1,
                    )
        fleet_rate = 0.0
        if args.writers > 1:
            fleet_rate = await bench.runs(
                f"(b'') drain by {args.writers} writer processes",
                lambda: bench.drain_by_processes(conn, engine, args.writers),
                repeat=1,
            )
        ratios = (
            ("ratio (b)/(a)", drain_rate, copy_rate),
            ("ratio (b'')/(a)", fleet_rate, copy_rate),
            # The writer must commit each batch before acknowledging it: (a') is COPY with that shape.
            ("ratio (b)/(a')", drain_rate, batch_copy_rate),
        )
        for label, rate, baseline in ratios:
            if rate:
                ratio = rate / baseline
                verdict = "ok" if ratio >= RATIO_TARGET else "BELOW TARGET"
                print(f"{label:<38}{ratio:>10.3f}   target >= {RATIO_TARGET}  {verdict}", flush=True)

        await bench.partitioned_vs_unpartitioned(flat_dsn)
        lags = await bench.lag(conn, engine, args.rate, args.lag_seconds)
        cuts = statistics.quantiles(lags, n=100)
        p50, p99 = statistics.median(lags), cuts[98]
        verdict = "ok" if p99 < LAG_P99_TARGET else "ABOVE TARGET"
        print(
            f"{f'(c)  lag at {bench.achieved_rate:,.0f}/s for {args.lag_seconds:.0f} s':<38}"
            f"p50 {p50 * 1000:,.1f} ms, p99 {p99 * 1000:,.1f} ms, max {max(lags) * 1000:,.1f} ms "
            f"({len(lags):,} events)   target p99 < {LAG_P99_TARGET:.0f} s  {verdict}",
            flush=True,
        )
    finally:
        await conn.close()
        await engine.dispose()
        redis = create_redis(settings)
        await redis.delete(*bench.keys.audit_streams())
        await redis.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="events per second for the lag measurement")
    parser.add_argument("--lag-seconds", type=float, default=15.0)
    parser.add_argument("--writers", type=int, default=2, help="writer processes for (b''); 0 or 1 to skip")
    parser.add_argument("--skip-methods", action="store_true", help="skip the one-off drain per insert method")
    parser.add_argument("--only-partitioning", action="store_true", help="run only (d), partitioned vs unpartitioned")
    parser.add_argument("--database-url", help="a Postgres server (a scratch database is created on it)")
    parser.add_argument("--redis-url", help="a Redis server (keys go under a run-specific prefix)")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main(parse_args()))
