"""What happened in a time range: outcomes per bucket, the busiest failing clients and numbers,
and the phone numbers whose PIN sign-in was locked.

Outcomes: a *success*; a *refusal* when the service would not check the credential
(:data:`~app.audit.history.attempts.REFUSAL_REASONS`: budget spent, account or PIN locked, limiter down); a
*failure* for every other unsuccessful attempt, ``invalid_request`` included. Clients are counted by
address, IPv6 ones by their /64 (one subscriber's allocation, as the rate limiter groups them).
Buckets are UTC and every bucket of the range is listed, empty ones as zeros, ready to chart.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import msgspec

from app.audit.history.attempts import REFUSAL_REASONS
from app.audit.history.filters import DEFAULT_TOP, Bucket, SummaryRequest, read_filters
from app.audit.history.params import FIRST_TIME, Params
from app.audit.history.rollups import recovery_reasons_sql, rollup_buckets_sql, rollup_channels_sql
from app.audit.history.sql import SqlParams, filter_conditions, where
from app.audit.pipeline.events import CHANNELS

BUCKET_LENGTHS: dict[Bucket, datetime.timedelta] = {
    "minute": datetime.timedelta(minutes=1),
    "hour": datetime.timedelta(hours=1),
    "day": datetime.timedelta(days=1),
}
DEFAULT_RANGE = datetime.timedelta(hours=24)
MAX_BUCKETS = 10_000
MAX_TOP = 100
PIN_LOCKED_MAX = 1000  # numbers listed under pin_locked
IPV6_CLIENT_PREFIX = 64


def parse_summary_request(
    values: Mapping[str, str | None], region: str, now: datetime.datetime | None = None
) -> SummaryRequest:
    """``since``/``until`` default to the 24 hours up to now; the other filters narrow it further."""
    params = Params(values)
    filters = read_filters(params, region)
    bucket: Bucket = "hour"
    match params.choice("bucket", BUCKET_LENGTHS, "Choose minute, hour or day."):
        case "minute" | "hour" | "day" as chosen:
            bucket = chosen
    top = params.whole_number("top", minimum=0, maximum=MAX_TOP)
    until = filters.until or now or datetime.datetime.now(datetime.UTC)
    # The 24 hours before until, or as many of them as there are since the first time accepted.
    since = filters.since or max(until, FIRST_TIME + DEFAULT_RANGE) - DEFAULT_RANGE
    if since >= until:
        if filters.since is None or filters.until is None:  # else read_filters has said so
            params.errors.add("since", "since must be earlier than until.")
    elif (until - since) / BUCKET_LENGTHS[bucket] > MAX_BUCKETS:
        params.errors.add("bucket", f"That range has more than {MAX_BUCKETS:,} {bucket}s: choose a larger bucket.")
    params.raise_if_any()
    return SummaryRequest(
        dataclasses.replace(filters, since=since, until=until), bucket, DEFAULT_TOP if top is None else top
    )


# ---- response ------------------------------------------------------------------------------------


class Counts(msgspec.Struct, kw_only=True):
    attempts: int
    successes: int
    failures: int
    refusals: int


class BucketCounts(msgspec.Struct, kw_only=True):
    start: datetime.datetime
    successes: int
    failures: int
    refusals: int


class ClientCounts(msgspec.Struct, kw_only=True):
    client: str  # an IPv4 address, or an IPv6 /64 such as "2c0f:eb68:12::/64"
    attempts: int
    successes: int
    failures: int
    refusals: int


class PhoneCounts(msgspec.Struct, kw_only=True):
    phone_number: str
    attempts: int
    successes: int
    failures: int
    refusals: int


class ChannelCounts(msgspec.Struct, kw_only=True):
    channel: str  # http (the login endpoint) or ussd (the USSD gateway)
    attempts: int
    successes: int
    failures: int
    refusals: int


class RecoveryCounts(msgspec.Struct, kw_only=True):
    """Self-service recovery codes of one channel (app/recovery): the pumping signal is a low ratio."""

    channel: str  # sms or ussd
    codes_sent: int
    recovered: int  # completions (and USSD PIN resets) that used this channel
    recovered_per_sent: float | None  # None when no code was sent


class PinLocked(msgspec.Struct, kw_only=True):
    phone_number: str
    refused_attempts: int
    first_at: datetime.datetime
    last_at: datetime.datetime


class Summary(msgspec.Struct, kw_only=True):
    since: datetime.datetime
    until: datetime.datetime
    bucket: Bucket
    totals: Counts
    channels: list[ChannelCounts]  # the totals split by channel, every channel listed
    buckets: list[BucketCounts]
    top_ips: list[ClientCounts]
    top_phone_numbers: list[PhoneCounts]
    pin_locked: list[PinLocked]
    pin_locked_truncated: bool
    recovery: list[RecoveryCounts] = msgspec.field(default_factory=list)  # every recovery channel listed


# ---- SQL -----------------------------------------------------------------------------------------
#
# Four statements, each aggregating in a hash table (the summary transaction gives them the
# memory: SUMMARY_WORK_MEM) rather than sorting millions of rows: buckets and the totals by channel,
# from the hourly rollups when they can answer (rollups.py), else one index range scan per bucket
# and one pass over the rows; clients and phone numbers with their PIN locks, one pass over the
# range's rows each (in the partitions it touches).


def _attempts(request: SummaryRequest, params: SqlParams, *extra: str, columns: str = "") -> str:
    """The matching attempts with ``refused`` worked out once per row ($1: the refusal reasons)."""
    conditions = [*filter_conditions(request.filters, params), *extra]
    return f"""SELECT success, reason = ANY($1::text[]) AS refused{columns}
        FROM login_attempts
        {where(conditions)}"""  # noqa: S608 (names are constants, values parameters)


COUNTS = """count(*) FILTER (WHERE success) AS successes,
           count(*) FILTER (WHERE NOT success AND NOT refused) AS failures,
           count(*) FILTER (WHERE refused) AS refusals"""


def _params() -> SqlParams:
    params = SqlParams()
    params.add(list(REFUSAL_REASONS))
    return params


def buckets_sql(request: SummaryRequest) -> tuple[str, list[Any]]:
    """Every bucket of the range, each counted over its own slice of the (created_at, id) index.

    (A GROUP BY date_trunc(...) would have the planner expect one group per row and sort them all.)
    """
    params = _params()
    unit = request.bucket  # one of three constants, never client text
    since, until = params.add(request.since), params.add(request.until)
    # The filters hold since and until too, which clip the first and last buckets.
    attempts = _attempts(
        request,
        params,
        "created_at >= bucket.start AT TIME ZONE 'UTC'",
        f"created_at < (bucket.start + interval '1 {unit}') AT TIME ZONE 'UTC'",
    )
    sql = f"""
SELECT bucket.start AT TIME ZONE 'UTC' AS start, counts.successes, counts.failures, counts.refusals
FROM generate_series(
    date_trunc('{unit}', {since}::timestamptz AT TIME ZONE 'UTC'),
    {until}::timestamptz AT TIME ZONE 'UTC' - interval '1 microsecond',
    interval '1 {unit}') AS bucket (start)
CROSS JOIN LATERAL (
    SELECT {COUNTS}
    FROM ({attempts}) AS attempt
) AS counts
ORDER BY bucket.start"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def channels_sql(request: SummaryRequest) -> tuple[str, list[Any]]:
    """The totals by channel; a channel without attempts is listed with zeros."""
    params = _params()
    channels = params.add(list(CHANNELS))
    attempts = _attempts(request, params, columns=", channel")
    sql = f"""
SELECT known.channel, count(attempt.channel) AS attempts,
       count(*) FILTER (WHERE attempt.success) AS successes,
       count(*) FILTER (WHERE NOT attempt.success AND NOT attempt.refused) AS failures,
       count(*) FILTER (WHERE attempt.refused) AS refusals
FROM unnest({channels}::text[]) AS known (channel)
LEFT JOIN ({attempts}) AS attempt ON attempt.channel = known.channel
GROUP BY known.channel
ORDER BY known.channel"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def top_ips_sql(request: SummaryRequest, ipv6_prefix: int = IPV6_CLIENT_PREFIX) -> tuple[str, list[Any]]:
    """Clients by failures: an IPv4 address, or an IPv6 /64 (grouped as inet, shown as text)."""
    params = _params()
    prefix = int(ipv6_prefix)
    client = f"CASE WHEN family(ip_address) = 6 THEN network(set_masklen(ip_address, {prefix})) ELSE ip_address END"
    attempts = _attempts(request, params, "ip_address IS NOT NULL", columns=f", {client} AS client")
    sql = f"""
SELECT CASE WHEN family(client) = 6 THEN client::text ELSE host(client) END AS client,
       count(*) AS attempts, {COUNTS}
FROM ({attempts}) AS attempt
GROUP BY attempt.client
ORDER BY failures DESC, refusals DESC, attempts DESC, attempt.client
LIMIT {params.add(request.top)}"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def phones_sql(request: SummaryRequest) -> tuple[str, list[Any]]:
    """Phone numbers by failures."""
    params = _params()
    attempts = _attempts(request, params, columns=", phone_number")
    sql = f"""
SELECT phone_number, count(*) AS attempts, {COUNTS}
FROM ({attempts}) AS attempt
GROUP BY phone_number
ORDER BY failures DESC, refusals DESC, attempts DESC, phone_number COLLATE "C"
LIMIT {params.add(request.top)}"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def pin_locked_sql(request: SummaryRequest) -> tuple[str, list[Any]]:
    """The numbers with attempts refused as ``pin_locked``, most recent first (one more than shown,
    to tell a truncated list). They are few: the partial index of pin_locked refusals finds them."""
    params = SqlParams()
    # A literal, not a parameter: the planner must see it to use the partial index.
    conditions = [*filter_conditions(request.filters, params), "reason = 'pin_locked'"]
    sql = f"""
SELECT phone_number, count(*) AS refused_attempts, min(created_at) AS first_at, max(created_at) AS last_at
FROM login_attempts
{where(conditions)}
GROUP BY phone_number
ORDER BY last_at DESC, phone_number COLLATE "C"
LIMIT {params.add(PIN_LOCKED_MAX + 1)}"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


RECOVERY_CHANNELS = ("sms", "ussd")


def recovery_sql(request: SummaryRequest) -> tuple[str, list[Any]]:
    """Codes sent and recoveries by channel; from the hourly rollups when they can answer."""
    params = SqlParams()
    counted = recovery_reasons_sql(request, params)
    channels = params.add(list(RECOVERY_CHANNELS))
    sql = f"""
SELECT known.channel,
       coalesce(sum(counted.attempts) FILTER (WHERE counted.reason = 'code_sent'), 0)::int8 AS codes_sent,
       coalesce(sum(counted.attempts) FILTER (WHERE counted.reason <> 'code_sent'), 0)::int8 AS recovered
FROM unnest({channels}::text[]) AS known (channel)
LEFT JOIN (
        {counted}
    ) AS counted ON counted.channel = known.channel
GROUP BY known.channel
ORDER BY known.channel"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def _recovery_counts(row: Any) -> RecoveryCounts:
    sent, recovered = int(row["codes_sent"]), int(row["recovered"])
    ratio = round(recovered / sent, 4) if sent else None
    return RecoveryCounts(channel=row["channel"], codes_sent=sent, recovered=recovered, recovered_per_sent=ratio)


# Hash tables for ~200,000 phone numbers and ~50,000 clients; without the room they spill to disk.
SUMMARY_WORK_MEM = "64MB"


async def _fetch(conn: Any, query: tuple[str, list[Any]]) -> list[Any]:
    sql, args = query
    rows: list[Any] = await conn.fetch(sql, *args)
    return rows


async def summarise(conn: Any, request: SummaryRequest, *, ipv6_prefix: int = IPV6_CLIENT_PREFIX) -> Summary:
    """Run inside one REPEATABLE READ transaction for figures that agree with each other.

    ``top=0`` leaves out the two top lists, the only part that reads every row of the range.
    """
    async with conn.transaction():  # a savepoint in the caller's: SET LOCAL needs one
        await conn.execute(f"SET LOCAL work_mem = '{SUMMARY_WORK_MEM}'")
        await conn.execute("SET LOCAL jit = off")  # compiling costs more than it saves on these
        counts = rollup_buckets_sql(request) or buckets_sql(request)  # the rollups when they can answer
        buckets = [BucketCounts(**dict(row)) for row in await _fetch(conn, counts)]
        by_channel = rollup_channels_sql(request, CHANNELS) or channels_sql(request)
        channels = [ChannelCounts(**dict(row)) for row in await _fetch(conn, by_channel)]
        top_ips: list[ClientCounts] = []
        top_phones: list[PhoneCounts] = []
        recovery = [_recovery_counts(row) for row in await _fetch(conn, recovery_sql(request))]
        if request.top:
            top_ips = [ClientCounts(**dict(row)) for row in await _fetch(conn, top_ips_sql(request, ipv6_prefix))]
            top_phones = [PhoneCounts(**dict(row)) for row in await _fetch(conn, phones_sql(request))]
        locked = [PinLocked(**dict(row)) for row in await _fetch(conn, pin_locked_sql(request))]
    totals = Counts(
        attempts=sum(b.successes + b.failures + b.refusals for b in buckets),
        successes=sum(b.successes for b in buckets),
        failures=sum(b.failures for b in buckets),
        refusals=sum(b.refusals for b in buckets),
    )
    return Summary(
        since=request.since,
        until=request.until,
        bucket=request.bucket,
        totals=totals,
        channels=channels,
        buckets=buckets,
        top_ips=top_ips,
        top_phone_numbers=top_phones,
        pin_locked=locked[:PIN_LOCKED_MAX],
        recovery=recovery,
        pin_locked_truncated=len(locked) > PIN_LOCKED_MAX,
    )
