"""Retention on the partitioned table: whole partitions dropped, batches only at the boundary,
rollups kept equal to the rows, and sign-ins answering throughout."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import asyncpg
import pytest

from app.audit.history.prune import count_older_than, prune
from app.audit.pipeline.partitions import list_partitions, month_start, next_month
from app.core.postgres import plain_dsn as postgres_dsn
from app.db import migrations
from tests.audit.history.support import Row, insert_rows
from tests.helpers import ROLLUPS_EQUAL_ROWS, STRONG_PASSWORD, new_phone, registered

NOW = datetime.datetime.now(datetime.UTC)


def on_scratch(base_settings: Any, work: Any) -> Any:
    """Run ``work(conn)`` on a database of its own: these tests drop partitions."""
    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch)

        async def run() -> Any:
            assert scratch.database_url
            conn = await asyncpg.connect(postgres_dsn(scratch.database_url))
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())


def test_prune_drops_whole_partitions_and_deletes_only_at_the_boundary(base_settings):
    """A cutoff inside the third month ahead: the months before go whole, that month in batches."""
    first = next_month(month_start(NOW))  # the migration's first monthly partition
    boundary = next_month(next_month(first))
    cutoff = boundary + datetime.timedelta(days=10, minutes=30)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        rows = [Row(created_at=NOW - datetime.timedelta(days=40 + n)) for n in range(7)]  # in the old table
        rows += [Row(created_at=first + datetime.timedelta(hours=n)) for n in range(5)]
        rows += [Row(created_at=next_month(first) + datetime.timedelta(hours=n)) for n in range(4)]
        rows += [Row(created_at=cutoff - datetime.timedelta(minutes=n + 1)) for n in range(6)]  # boundary, old
        kept = [Row(created_at=cutoff), Row(created_at=cutoff + datetime.timedelta(days=1))]
        kept += [Row(created_at=NOW + datetime.timedelta(days=3650))]  # default partition
        await insert_rows(conn, rows + kept)
        counted = await count_older_than(conn, cutoff)
        done = await prune(conn, cutoff, batch_size=4)
        after = {p.name for p in await list_partitions(conn)}
        # With the old table gone, an old row now lands in the default partition; the next prune takes it.
        await insert_rows(conn, [Row(created_at=NOW - datetime.timedelta(days=400))])
        again = await prune(conn, cutoff, batch_size=4)
        return {
            "counted": counted,
            "done": done,
            "again": again,
            "after": after,
            "remaining": sorted(r["created_at"] for r in await conn.fetch("SELECT created_at FROM login_attempts")),
            "kept": sorted(row.created_at for row in kept),
            "rollups_equal": await conn.fetchval(ROLLUPS_EQUAL_ROWS),
        }

    result = on_scratch(base_settings, work)
    done = result["done"]
    assert result["counted"] == 22 and done.deleted == 22
    assert set(done.dropped) == {
        "login_attempts_before",
        f"login_attempts_y{first:%Ym%m}",
        f"login_attempts_y{next_month(first):%Ym%m}",
    }
    assert not set(done.dropped) & result["after"]
    assert done.batches == 2  # 6 boundary rows in batches of 4; the default partition held none that old
    assert result["again"].deleted == 1 and result["again"].dropped == []
    assert result["remaining"] == result["kept"]
    assert result["rollups_equal"]


def test_prune_detaches_concurrently_without_a_default_partition(base_settings):
    first = next_month(month_start(NOW))

    async def work(conn: asyncpg.Connection) -> Any:
        await conn.execute("DROP TABLE login_attempts_default")
        await insert_rows(
            conn, [Row(created_at=first + datetime.timedelta(hours=1)), Row(created_at=next_month(first))]
        )
        done = await prune(conn, next_month(first))
        return done, await conn.fetchval("SELECT count(*) FROM login_attempts"), await conn.fetchval(ROLLUPS_EQUAL_ROWS)

    done, remaining, rollups_equal = on_scratch(base_settings, work)
    assert f"login_attempts_y{first:%Ym%m}" in done.dropped and done.deleted == 1
    assert remaining == 1 and rollups_equal


LARGE = 300_000


@pytest.mark.slow
async def test_sign_ins_keep_answering_during_a_prune_of_a_large_table(client, db, settings):
    phone = new_phone()
    await registered(client, phone_number=phone)
    await db.execute(
        """INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, ip_address)
           SELECT gen_random_uuid(), $1::timestamptz - g * interval '1 second',
                  '+25078' || lpad((g % 5000)::text, 7, '0'), false, 'invalid_credentials', '41.186.0.1'
           FROM generate_series(1, $2) g""",
        NOW - datetime.timedelta(days=400),
        LARGE,
    )
    pruner = await asyncpg.connect(postgres_dsn(settings.database_url or ""))
    try:
        task = asyncio.create_task(prune(pruner, NOW - datetime.timedelta(days=365), batch_size=5000))
        answered = []
        while not task.done():
            response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
            answered.append(response.status_code)
            await asyncio.sleep(0.01)
        done = await task
    finally:
        await pruner.close()
    assert done.deleted == LARGE
    assert len(answered) > 5 and set(answered) == {200}
