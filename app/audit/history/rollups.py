"""Summary counts from the hourly rollups (``login_attempts_hourly``) instead of the rows.

The audit writer keeps the rollups in the transaction of every batch, so they equal a GROUP BY
over the rows (tests/audit/pipeline/test_partitions.py holds them to it). A summary by hour or day
whose filters the rollups can answer (time range, outcome, reason, channel) reads the whole hours
of its range from them, a few rows per hour whatever the traffic, and only the ragged ends (a
``since`` or ``until`` inside an hour) from the rows: its buckets and its totals by channel. Any
other filter, or minute buckets, read the rows as before (app/audit/history/summary.py).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from app.audit.history.filters import AttemptFilters, SummaryRequest
from app.audit.history.sql import SqlParams, filter_conditions, where

HOUR = datetime.timedelta(hours=1)


def answerable(request: SummaryRequest) -> bool:
    """The rollups hold hour, outcome, reason and channel: the request filters on nothing else."""
    filters = request.filters
    return all(value is None for value in (filters.phone_number, filters.ip, filters.auth_method, filters.user_id))


def _whole_hours(since: datetime.datetime, until: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
    """The hours lying wholly inside ``[since, until)`` (first, end); first >= end when there are none."""
    since, until = since.astimezone(datetime.UTC), until.astimezone(datetime.UTC)
    floor = since.replace(minute=0, second=0, microsecond=0)
    first = floor if floor == since else floor + HOUR
    return first, until.replace(minute=0, second=0, microsecond=0)


def _counted_sql(request: SummaryRequest, params: SqlParams, unit: str) -> str | None:
    """The request's attempts as (start, success, refused, channel, attempts) rows, ``start`` truncated
    to ``unit`` (hour or day): the rollups of its whole hours and its ragged ends' rows one by one;
    None when the rollups cannot answer."""
    from app.audit.history.attempts import REFUSAL_REASONS

    if not answerable(request):
        return None
    first, end = _whole_hours(request.since, request.until)
    if first >= end:
        return None  # less than an hour: the rows are few
    refusals = params.add(list(REFUSAL_REASONS))
    filters = request.filters
    kept = AttemptFilters(success=filters.success, reasons=filters.reasons, channel=filters.channel)
    rollup_conditions = [*filter_conditions(kept, params), f"hour >= {params.add(first)}", f"hour < {params.add(end)}"]
    parts = [
        f"""SELECT date_trunc('{unit}', hour, 'UTC') AS start, success, reason = ANY({refusals}::text[]) AS refused,
               channel, attempts
        FROM login_attempts_hourly
        {where(rollup_conditions)}"""  # noqa: S608 (names are constants, values parameters)
    ]
    for edge_since, edge_until in ((request.since, first), (end, request.until)):
        if edge_since < edge_until:  # a ragged end: the rows of less than an hour
            edge = dataclasses.replace(filters, since=edge_since, until=edge_until)
            parts.append(
                f"""SELECT date_trunc('{unit}', created_at, 'UTC') AS start, success,
                       reason = ANY({refusals}::text[]) AS refused, channel, 1 AS attempts
                FROM login_attempts
                {where(filter_conditions(edge, params))}"""  # noqa: S608 (names are constants, values parameters)
            )
    return "\n        UNION ALL\n        ".join(parts)


SUMS = """coalesce(sum(counted.attempts) FILTER (WHERE counted.success), 0)::int8 AS successes,
       coalesce(sum(counted.attempts) FILTER (WHERE NOT counted.success AND NOT counted.refused), 0)::int8 AS failures,
       coalesce(sum(counted.attempts) FILTER (WHERE counted.refused), 0)::int8 AS refusals"""


def rollup_buckets_sql(request: SummaryRequest) -> tuple[str, list[Any]] | None:
    """The summary's buckets from the rollups (same columns as ``buckets_sql``), or None if they cannot answer."""
    if request.bucket == "minute":
        return None  # an hour's rollup cannot be split into minutes
    params = SqlParams()
    unit = request.bucket  # hour or day, never client text
    counted = _counted_sql(request, params, unit)
    if counted is None:
        return None
    since, until = params.add(request.since), params.add(request.until)
    sql = f"""
SELECT bucket.start AT TIME ZONE 'UTC' AS start, {SUMS}
FROM generate_series(
    date_trunc('{unit}', {since}::timestamptz AT TIME ZONE 'UTC'),
    {until}::timestamptz AT TIME ZONE 'UTC' - interval '1 microsecond',
    interval '1 {unit}') AS bucket (start)
LEFT JOIN (
        {counted}
    ) AS counted ON counted.start = bucket.start AT TIME ZONE 'UTC'
GROUP BY bucket.start
ORDER BY bucket.start"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


def rollup_channels_sql(request: SummaryRequest, channels: tuple[str, ...]) -> tuple[str, list[Any]] | None:
    """The totals by channel from the rollups (same columns as ``channels_sql``), or None if they
    cannot answer; whatever the request's buckets, since totals do not depend on them."""
    params = SqlParams()
    counted = _counted_sql(request, params, "hour")
    if counted is None:
        return None
    sql = f"""
SELECT known.channel, coalesce(sum(counted.attempts), 0)::int8 AS attempts, {SUMS}
FROM unnest({params.add(list(channels))}::text[]) AS known (channel)
LEFT JOIN (
        {counted}
    ) AS counted ON counted.channel = known.channel
GROUP BY known.channel
ORDER BY known.channel"""  # noqa: S608 (names are constants, values parameters)
    return sql, params.values


RECOVERY_REASONS = ("code_sent", "recovered", "recovered_unverified")


def recovery_reasons_sql(request: SummaryRequest, params: SqlParams) -> str:
    """The request's recovery rows as (channel, reason, attempts): from the rollups for its whole
    hours when they can answer, else (and for the ragged ends) from the rows."""
    reasons = params.add(list(RECOVERY_REASONS))
    filters = request.filters
    first, end = _whole_hours(request.since, request.until)
    if not answerable(request) or first >= end:
        return f"""SELECT channel, reason, 1 AS attempts FROM login_attempts
        {where([*filter_conditions(filters, params), f"reason = ANY({reasons}::text[])"])}"""  # noqa: S608
    kept = AttemptFilters(success=filters.success, reasons=filters.reasons, channel=filters.channel)
    conditions = [
        *filter_conditions(kept, params),
        f"hour >= {params.add(first)}",
        f"hour < {params.add(end)}",
        f"reason = ANY({reasons}::text[])",
    ]
    parts = [f"SELECT channel, reason, attempts FROM login_attempts_hourly {where(conditions)}"]  # noqa: S608
    for edge_since, edge_until in ((request.since, first), (end, request.until)):
        if edge_since < edge_until:
            edge = dataclasses.replace(filters, since=edge_since, until=edge_until)
            edge_conditions = [*filter_conditions(edge, params), f"reason = ANY({reasons}::text[])"]
            parts.append(f"SELECT channel, reason, 1 AS attempts FROM login_attempts {where(edge_conditions)}")  # noqa: S608
    return "\n        UNION ALL\n        ".join(parts)
