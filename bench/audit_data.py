"""A realistic ``login_attempts`` table, generated inside Postgres, for the audit query benchmark.

Shape (30 days ending at ``END``, rows in time order as the writer appends them):

- ~200,000 phone numbers, skewed: the busiest few take thousands of attempts (targets of guessing),
  most a handful; 1% of rows carry junk text instead of a number, as refused logins do;
- ~50,000 client addresses: about half the traffic from four heavy /16s (mobile carriers' NAT),
  the rest spread over the IPv4 space, ~7% IPv6 (5,000 /64s under 2c0f:eb68::/32);
- 30% successes; of the failures, invalid credentials and unknown accounts dominate, with refusals
  (rate_limited, pin_locked, account_locked, limiter_unavailable) about a quarter of them.

Rows go into monthly partitions (:func:`monthly_partitions`); the hourly rollups are filled from
them in one pass after the load. Generated with ``INSERT ... SELECT FROM generate_series`` (the data
never leaves the server), with
the table's indexes dropped during the load and rebuilt afterwards, as a bulk load is done.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

END = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
DAYS = 30
PHONES = 200_000
ADDRESSES = 50_000
HEAVY_NETWORKS = ("41.186.0.0", "197.157.0.0", "105.178.0.0", "41.216.0.0")
IPV6_PREFIX = "2c0f:eb68:"
USER_AGENTS = (
    "Mozilla/5.0 (Linux; Android 12; TECNO KG5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile",
    "Mozilla/5.0 (Linux; Android 10; itel A571W) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0 Mobile",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "LadysEssence/3.4.1 (Android 13; SM-A145F)",
    "LadysEssence/3.4.0 (iOS 16.7)",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "curl/8.4.0",
    "USSD-gateway/1.2",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/121.0 Safari/537.36",
)

# $1 first i, $2 last i, $3 total rows, $4 end of the period.
GENERATE = f"""
INSERT INTO login_attempts
    (event_id, created_at, phone_number, user_id, success, auth_method, reason, ip_address, user_agent, request_id,
     channel)
SELECT
    gen_random_uuid(),
    $4::timestamptz - interval '{DAYS} days' + (g.i::float8 / $3) * interval '{DAYS} days'
        + g.jitter * interval '1 second',
    CASE WHEN g.junk THEN 'junk-' || (g.phone % 97) ELSE '+25078' || lpad(g.phone::text, 7, '0') END,
    CASE WHEN o.reason IN ('ok', 'invalid_credentials', 'pin_not_enabled', 'pin_locked', 'account_inactive')
         AND NOT g.junk THEN g.phone + 1 END,
    o.reason = 'ok',
    CASE WHEN g.r_method < 0.70 THEN 'password' WHEN g.r_method < 0.98 THEN 'pin' END,
    o.reason,
    CASE
        WHEN g.address < 20000 THEN
            (ARRAY{list(HEAVY_NETWORKS)}::inet[])[1 + g.address % 4] + ((g.address / 4) * 13 % 65536)
        WHEN g.address < 45000 THEN '0.0.0.0'::inet + (g.address::int8 * 2654435761 % 4294967296)
        ELSE ('{IPV6_PREFIX}' || to_hex(g.address % 5000) || '::' || to_hex(g.address))::inet
    END,
    (ARRAY{list(USER_AGENTS)})[1 + g.phone % {len(USER_AGENTS)}],
    md5(g.i::text),
    CASE WHEN g.phone % 10 = 0 THEN 'ussd' ELSE 'http' END  -- one number in ten signs in from a feature phone
FROM (
    SELECT
        i,
        random() * 2 AS jitter,
        floor({PHONES} * power(random(), 2))::int AS phone,
        random() < 0.01 AS junk,
        floor({ADDRESSES} * power(random(), 1.5))::int AS address,
        random() AS r_outcome,
        random() AS r_reason,
        random() AS r_method
    FROM generate_series($1::int8, $2::int8) AS i
) AS g
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN g.r_outcome < 0.30 THEN 'ok'
        WHEN g.r_reason < 0.45 THEN 'invalid_credentials'
        WHEN g.r_reason < 0.65 THEN 'unknown_account'
        WHEN g.r_reason < 0.80 THEN 'rate_limited'
        WHEN g.r_reason < 0.85 THEN 'invalid_request'
        WHEN g.r_reason < 0.89 THEN 'pin_not_enabled'
        WHEN g.r_reason < 0.93 THEN 'pin_locked'
        WHEN g.r_reason < 0.97 THEN 'account_locked'
        WHEN g.r_reason < 0.99 THEN 'account_inactive'
        ELSE 'limiter_unavailable'
    END AS reason
) AS o
"""  # noqa: S608 (constants of this module)

TABLE = "login_attempts"
ROLLUPS = """
INSERT INTO login_attempts_hourly (hour, success, reason, channel, attempts)
SELECT date_trunc('hour', created_at, 'UTC'), success, reason, channel, count(*) FROM login_attempts GROUP BY 1, 2, 3, 4
"""


async def monthly_partitions(conn: Any) -> None:
    """The data's months as partitions of their own, as a table partitioned before them would hold them.

    A database migrated from nothing keeps everything before next month in ``login_attempts_before``;
    with no rows in it, it is dropped and the months of ``END - DAYS`` onwards are created.
    """
    from app.audit.pipeline.partitions import ensure_partitions

    if await conn.fetchval("SELECT to_regclass('login_attempts_before') IS NOT NULL"):
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM login_attempts_before)"):
            return
        await conn.execute("ALTER TABLE login_attempts DETACH PARTITION login_attempts_before")
        await conn.execute("DROP TABLE login_attempts_before")
    await ensure_partitions(conn, months_ahead=2, now=END - datetime.timedelta(days=DAYS))


def phone_text(n: int) -> str:
    return f"+25078{n:07d}"


async def drop_indexes(conn: Any) -> list[str]:
    """Drop every index and key of the table; return the statements that rebuild them."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'u')",
        TABLE,
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 AND indexname <> ALL($2::text[])",
        TABLE,
        [row["conname"] for row in constraints],
    )
    rebuild = [f'ALTER TABLE {TABLE} ADD CONSTRAINT "{c["conname"]}" {c["definition"]}' for c in constraints]
    # A partitioned index reads back as "ON ONLY login_attempts": rebuilt so, it would cover no partition.
    rebuild += [index["indexdef"].replace(" ON ONLY ", " ON ") for index in indexes]
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    for constraint in constraints:
        await conn.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{constraint["conname"]}"')
    return rebuild


async def generate(conn: Any, rows: int, log: Callable[[str], None] = print, chunk: int = 1_000_000) -> None:
    """Fill the (empty) table with ``rows`` rows, then rebuild its indexes and ANALYZE."""
    started = time.perf_counter()
    rebuild = await drop_indexes(conn)
    await conn.execute("SET synchronous_commit = off")
    for first in range(1, rows + 1, chunk):
        last = min(first + chunk - 1, rows)
        await conn.execute(GENERATE, first, last, rows, END)
        log(f"  generated {last:,} / {rows:,} rows ({time.perf_counter() - started:.0f} s)")
    loaded = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute("SET max_parallel_maintenance_workers = 2")
    for statement in rebuild:
        index_started = time.perf_counter()
        await conn.execute(statement)
        log(f"  {statement.split(' ON ')[0][:90]}: {time.perf_counter() - index_started:.1f} s")
    indexed = time.perf_counter()
    # What the audit writer would have added batch by batch, in one pass.
    await conn.execute(ROLLUPS)
    log(f"  hourly rollups: {time.perf_counter() - indexed:.1f} s")
    await conn.execute(f"VACUUM (ANALYZE) {TABLE}")
    await conn.execute("VACUUM (ANALYZE) login_attempts_hourly")
    log(
        f"generated {rows:,} rows: load {loaded - started:.0f} s, indexes {indexed - loaded:.0f} s, "
        f"vacuum+analyze {time.perf_counter() - indexed:.0f} s"
    )
