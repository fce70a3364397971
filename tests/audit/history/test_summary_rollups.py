"""Summary buckets and totals by channel read from the hourly rollups agree with the same figures
counted from the rows."""

from __future__ import annotations

import asyncio
import datetime
import random

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.audit.history.rollups import rollup_buckets_sql, rollup_channels_sql
from app.audit.history.summary import buckets_sql, channels_sql, parse_summary_request
from app.audit.pipeline.events import CHANNELS, REASONS
from app.core.settings import Settings
from tests.audit.history.support import BASE_TIME, Row, insert_rows
from tests.conftest import plain_dsn

SPAN_MINUTES = 3 * 24 * 60


async def _fill(conn: asyncpg.Connection) -> None:
    rng = random.Random(16)
    rows = []
    for _ in range(1500):
        reason = rng.choice(REASONS)
        moment = BASE_TIME + datetime.timedelta(minutes=rng.randrange(SPAN_MINUTES), seconds=rng.random() * 60)
        channel = rng.choice(CHANNELS)
        rows.append(Row(created_at=moment, reason=reason, success=reason == "ok", channel=channel))
    await insert_rows(conn, rows)


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(-120, SPAN_MINUTES),
    length=st.integers(1, SPAN_MINUTES),
    seconds=st.integers(0, 59),
    bucket=st.sampled_from(["minute", "hour", "day"]),
    success=st.sampled_from([None, "true", "false"]),
    reason=st.sampled_from([None, "rate_limited", "invalid_credentials,pin_locked"]),
    channel=st.sampled_from([None, *CHANNELS]),
)
def test_rollup_buckets_and_channels_equal_the_rows(
    settings: Settings, start, length, seconds, bucket, success, reason, channel
):
    since = BASE_TIME + datetime.timedelta(minutes=start, seconds=seconds)
    until = since + datetime.timedelta(minutes=length)
    values = {
        "since": _iso(since),
        "until": _iso(until),
        "bucket": bucket,
        "success": success,
        "reason": reason,
        "channel": channel,
    }
    request = parse_summary_request(values, "RW")

    async def run() -> None:
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            if not await conn.fetchval("SELECT count(*) FROM login_attempts"):
                await _fill(conn)
            from_rollups = rollup_buckets_sql(request)
            channels_from_rollups = rollup_channels_sql(request, CHANNELS)
            if channels_from_rollups is None:  # less than a whole hour: the rows answer, nothing to compare
                assert length < 120 and from_rollups is None
                return
            if bucket == "minute":
                assert from_rollups is None
            else:
                assert from_rollups is not None
                expected = [tuple(row) for row in await conn.fetch(*_flat(buckets_sql(request)))]
                assert [tuple(row) for row in await conn.fetch(*_flat(from_rollups))] == expected
            expected_channels = [tuple(row) for row in await conn.fetch(*_flat(channels_sql(request)))]
            assert [tuple(row) for row in await conn.fetch(*_flat(channels_from_rollups))] == expected_channels
        finally:
            await conn.close()

    asyncio.run(run())


def _flat(query):
    sql, args = query
    return (sql, *args)


def test_filters_the_rollups_lack_read_the_rows():
    for extra in ({"phone_number": "0788000001"}, {"ip": "41.186.1.2"}, {"auth_method": "pin"}, {"user_id": "7"}):
        values = {"since": "2026-11-20T00:00:00Z", "until": "2026-11-22T00:00:00Z", **extra}
        request = parse_summary_request(values, "RW")
        assert rollup_buckets_sql(request) is None and rollup_channels_sql(request, CHANNELS) is None
    minutes = parse_summary_request(
        {"since": "2026-11-20T00:00:00Z", "until": "2026-11-20T05:00:00Z", "bucket": "minute"}, "RW"
    )
    assert rollup_buckets_sql(minutes) is None
    assert rollup_channels_sql(minutes, CHANNELS) is not None  # totals do not depend on the buckets
