"""The export streams in constant memory and stops the server's work when the reader stops."""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from app.audit.history.export import ExportResult, export_chunks, export_sql, neutralise_formula
from app.audit.history.filters import AttemptFilters
from tests.audit.history.support import BASE_TIME
from tests.conftest import plain_dsn

ROWS = 100_000
FILL = """
INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, auth_method, ip_address, user_agent)
SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 second', '+25078' || lpad((i % 5000)::text, 7, '0'),
       i % 3 = 0, CASE WHEN i % 3 = 0 THEN 'ok' ELSE 'invalid_credentials' END, 'pin',
       '41.186.0.0'::inet + (i % 60000), 'Mozilla/5.0 (Linux; Android 12; TECNO KG5) AppleWebKit/537.36 Chrome/120'
FROM generate_series(1, $2::int) AS i
"""


def on(conn: Any) -> Any:
    @asynccontextmanager
    async def connect() -> AsyncIterator[Any]:
        async with conn.transaction():
            yield conn

    return connect


async def test_a_large_export_streams_in_constant_memory(db):
    await db.execute(FILL, BASE_TIME, ROWS)
    result = ExportResult()
    size = 0
    lines = 0
    tracemalloc.start()
    try:
        async for chunk in export_chunks(on(db), AttemptFilters(), "csv", result):
            size += len(chunk)
            lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.finished and result.rows == ROWS
    assert lines == ROWS + 1  # and a header
    assert size > 15_000_000
    assert peak < 3_000_000, f"peak {peak:,} bytes for a {size:,}-byte export"


async def test_stopping_early_cancels_the_copy_and_frees_the_connection(db, settings):
    await db.execute(FILL, BASE_TIME, 20_000)
    conn = await asyncpg.connect(plain_dsn(settings))
    try:
        chunks = export_chunks(on(conn), AttemptFilters(success=False), "ndjson")
        first = await anext(chunks)
        assert first.startswith(b'{"id"')
        await chunks.aclose()
        await asyncio.sleep(0.1)
        # The same connection answers at once, outside any transaction: the COPY is gone.
        assert await conn.fetchval("SELECT 1") == 1
        assert not conn.is_in_transaction()
        state = await db.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid())
        assert state == "idle"
    finally:
        await conn.close()


async def test_a_failing_copy_reaches_the_reader(db):
    @asynccontextmanager
    async def impatient() -> AsyncIterator[Any]:
        async with db.transaction():
            await db.execute("SET LOCAL statement_timeout = 1")  # no COPY of 20,000 rows ends in 1 ms
            yield db

    await db.execute(FILL, BASE_TIME, 20_000)
    with pytest.raises(asyncpg.QueryCanceledError):
        async for _ in export_chunks(impatient, AttemptFilters(), "csv"):
            pass
    assert await db.fetchval("SELECT 1") == 1


def test_formula_prefixes():
    assert neutralise_formula("=1+1") == "'=1+1"
    assert neutralise_formula("+250788123456") == "'+250788123456"
    assert neutralise_formula("\tx") == "'\tx"
    assert neutralise_formula("41.186.0.1") == "41.186.0.1"
    assert neutralise_formula("") == ""


SORT_NODE = re.compile(r"(^|->\s+)(Incremental )?Sort\s+\(cost", re.MULTILINE)


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_the_export_walks_an_index_in_order_instead_of_sorting(db, fmt):
    """A sort would read every matching row before sending the first, spilling to disk at scale."""
    for filters in (AttemptFilters(), AttemptFilters(phone_number="+250788000001"), AttemptFilters(success=False)):
        sql, args = export_sql(filters, fmt)
        async with db.transaction():
            # As on a big table. The shared test table is tiny and its statistics are whatever the
            # tests before left, so the planner is told what a big table would make it choose; a
            # sort still shows when no index gives the order.
            await db.execute("SET LOCAL enable_seqscan = off")
            await db.execute("SET LOCAL enable_bitmapscan = off")
            await db.execute("SET LOCAL enable_sort = off")
            plan = "\n".join(row[0] for row in await db.fetch("EXPLAIN " + sql, *args))
        # No sort node; a Merge Append of the partitions' index scans (its "Sort Key" line) streams in order.
        assert not SORT_NODE.search(plan), plan
        assert "Index" in plan, plan
