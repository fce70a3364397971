"""Migrations on real Postgres: one head, a full round trip, and agreement with the models."""

import asyncio
import datetime
import uuid

import asyncpg

from app.core.postgres import plain_dsn
from app.db import migrations
from tests.helpers import ROLLUPS_EQUAL_ROWS


def _tables(settings):
    async def read():
        conn = await asyncpg.connect(plain_dsn(settings.database_url))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row["tablename"] for row in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_exactly_one_head(base_settings):
    assert len(migrations.heads(base_settings)) == 1


def test_upgrade_downgrade_upgrade_round_trip(base_settings):
    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch)
        assert {"users", "refresh_tokens", "login_attempts", "alembic_version"} <= _tables(scratch)
        migrations.downgrade(scratch, "base")
        assert _tables(scratch) <= {"alembic_version"}
        migrations.upgrade(scratch)
        assert {"users", "refresh_tokens", "login_attempts"} <= _tables(scratch)


def test_models_match_migrations(base_settings):
    result = migrations.check(base_settings)
    assert result.differences == []
    assert result.ok and result.database_current


def _run(settings, fn):
    async def go():
        conn = await asyncpg.connect(plain_dsn(settings.database_url))
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


OLD_ROWS = 3000


def test_partitioning_a_populated_table_round_trip(base_settings):
    """0002 -> head -> 0002 -> head with rows: none lost, the old table attached unrewritten, ids continue."""

    async def fill(conn):
        await conn.execute(
            """INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, ip_address)
               SELECT gen_random_uuid(), now() - g * interval '37 minutes', '+25078' || lpad(g::text, 7, '0'),
                      g % 3 = 0, CASE WHEN g % 3 = 0 THEN 'ok' ELSE 'invalid_credentials' END, '10.0.0.1'
               FROM generate_series(1, $1) g""",
            OLD_ROWS,
        )
        return await conn.fetchval("SELECT pg_relation_filenode('login_attempts')")

    async def inspect(conn):
        return {
            "rows": await conn.fetchval("SELECT count(*) FROM login_attempts"),
            "distinct_ids": await conn.fetchval("SELECT count(DISTINCT id) FROM login_attempts"),
            "max_id": await conn.fetchval("SELECT max(id) FROM login_attempts"),
            "kind": await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'login_attempts'"),
        }

    async def after_upgrade(conn):
        state = await inspect(conn)
        state["before_filenode"] = await conn.fetchval("SELECT pg_relation_filenode('login_attempts_before')")
        state["in_before"] = await conn.fetchval("SELECT count(*) FROM login_attempts_before")
        state["rollups_match"] = await conn.fetchval(ROLLUPS_EQUAL_ROWS)
        # A new row, one far in the future (default partition), and a redelivery of the first.
        insert = """INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason)
                    VALUES ($1, $2, '+250780000000', false, 'invalid_credentials')
                    ON CONFLICT (event_id, created_at) DO NOTHING"""
        event_id = uuid.uuid4()
        moment = datetime.datetime.now(datetime.UTC)
        far = moment + datetime.timedelta(days=3650)
        state["statuses"] = [
            await conn.execute(insert, event_id, moment),
            await conn.execute(insert, event_id, moment),
            await conn.execute(insert, uuid.uuid4(), far),
        ]
        state["new_ids"] = [
            row["id"] for row in await conn.fetch("SELECT id FROM login_attempts WHERE created_at >= $1", moment)
        ]
        state["in_default"] = await conn.fetchval("SELECT count(*) FROM login_attempts_default")
        return state

    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch, "0002")
        filenode = _run(scratch, fill)
        before = _run(scratch, inspect)
        assert before["kind"] == "r" and before["rows"] == OLD_ROWS

        migrations.upgrade(scratch)
        state = _run(scratch, after_upgrade)
        assert state["kind"] == "p"
        assert state["rows"] == OLD_ROWS and state["in_before"] == OLD_ROWS
        assert state["before_filenode"] == filenode  # attached as it was, not rewritten
        assert state["rollups_match"]
        assert state["statuses"] == ["INSERT 0 1", "INSERT 0 0", "INSERT 0 1"]
        assert state["in_default"] == 1
        assert min(state["new_ids"]) > before["max_id"]

        migrations.downgrade(scratch, "0002")
        down = _run(scratch, inspect)
        assert down["kind"] == "r"
        assert down["rows"] == down["distinct_ids"] == OLD_ROWS + 2
        new_id = _run(
            scratch,
            lambda conn: conn.fetchval(
                """INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason)
                   VALUES (gen_random_uuid(), now(), '+250780000001', true, 'ok') RETURNING id"""
            ),
        )
        assert new_id > max(state["new_ids"])

        migrations.upgrade(scratch)
        again = _run(scratch, inspect)
        assert again["kind"] == "p" and again["rows"] == OLD_ROWS + 3
        # The row dated ten years ahead moved out of the old table, to the default partition.
        assert _run(scratch, lambda conn: conn.fetchval("SELECT count(*) FROM login_attempts_default")) == 1
        assert _run(scratch, lambda conn: conn.fetchval(ROLLUPS_EQUAL_ROWS))


ROLLUPS_EQUAL_ROWS_WITHOUT_CHANNEL = """
SELECT (SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM (
            SELECT date_trunc('hour', created_at, 'UTC') AS hour, success, reason, count(*) AS attempts
            FROM login_attempts GROUP BY 1, 2, 3) r)
     = (SELECT coalesce(array_agg(h ORDER BY h), '{}') FROM (
            SELECT hour, success, reason, attempts FROM login_attempts_hourly WHERE attempts > 0) h)
"""


def test_rollups_gain_and_lose_the_channel_without_losing_a_count(base_settings):
    """0009 -> 0010 -> 0009 -> 0010 with USSD and HTTP rows: the rollups equal the rows at every step."""

    async def fill(conn):
        await conn.execute(
            """INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, channel)
               SELECT gen_random_uuid(), now() - g * interval '11 minutes', '+25078' || lpad(g::text, 7, '0'),
                      g % 4 = 0, CASE WHEN g % 4 = 0 THEN 'ok' ELSE 'invalid_credentials' END,
                      CASE WHEN g % 3 = 0 THEN 'ussd' ELSE 'http' END
               FROM generate_series(1, 2000) g"""
        )
        # As the 0009 writer counted them: per hour, outcome and reason.
        await conn.execute(
            """INSERT INTO login_attempts_hourly (hour, success, reason, attempts)
               SELECT date_trunc('hour', created_at, 'UTC'), success, reason, count(*) FROM login_attempts
               GROUP BY 1, 2, 3"""
        )
        return await conn.fetchval(ROLLUPS_EQUAL_ROWS_WITHOUT_CHANNEL)

    def by_channel(conn):
        return conn.fetch("SELECT channel, sum(attempts) AS attempts FROM login_attempts_hourly GROUP BY 1 ORDER BY 1")

    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch, "0009_admin")
        assert _run(scratch, fill)
        migrations.upgrade(scratch, "0010_rollup_channel")
        assert _run(scratch, lambda conn: conn.fetchval(ROLLUPS_EQUAL_ROWS))
        channels = {row["channel"]: row["attempts"] for row in _run(scratch, by_channel)}
        assert channels == {"http": 2000 - 2000 // 3, "ussd": 2000 // 3}
        migrations.downgrade(scratch, "0009_admin")
        assert _run(scratch, lambda conn: conn.fetchval(ROLLUPS_EQUAL_ROWS_WITHOUT_CHANNEL))
        migrations.upgrade(scratch)
        assert _run(scratch, lambda conn: conn.fetchval(ROLLUPS_EQUAL_ROWS))
