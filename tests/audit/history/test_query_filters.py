"""Property tests: every filter combination, paged at any size, against the same filter in Python.

Rows and filters are drawn from small pools so that filters hit, miss and tie often: equal
timestamps (the id breaks the tie), ``since``/``until`` exactly on a row's time (inclusive /
exclusive), phone numbers typed in another form, addresses inside and outside each network, IPv4
against IPv6 networks.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.audit.history.attempts import REFUSAL_REASONS, fetch_page
from app.audit.history.cursor import Cursor, decode_cursor
from app.audit.history.export import export_chunks
from app.audit.history.filters import AttemptFilters, parse_page_request
from app.audit.history.summary import parse_summary_request, summarise
from app.audit.pipeline.events import REASONS
from tests.audit.history.support import BASE_TIME, Row, insert_rows
from tests.conftest import plain_dsn

# Stored value -> forms a person might type for it.
PHONES = {
    "+250788000001": ["0788000001", "+250788000001", "+250 788 000 001", "250788000001"],
    "+250722000003": ["0722000003"],
    "junk=1+1": ["junk=1+1"],
}
ADDRESSES = ["41.186.0.1", "41.186.200.7", "41.187.0.1", "197.157.3.4", "2c0f:eb68:1:2::5", "2c0f:eb68:1:3::9", None]
NETWORKS = [
    "41.186.0.0/16",
    "41.186.0.1",
    "41.0.0.0/8",
    "0.0.0.0/0",
    "197.157.3.4/32",
    "10.0.0.0/8",
    "2c0f:eb68::/32",
    "2c0f:eb68:1:2::/64",
    "2c0f:eb68:1:2::5",
    "::/0",
]
FAILURE_REASONS = [reason for reason in REASONS if reason != "ok"]
MINUTE = datetime.timedelta(minutes=1)


@st.composite
def rows(draw: st.DrawFn) -> Row:
    success = draw(st.booleans())
    return Row(
        created_at=BASE_TIME + draw(st.integers(0, 12)) * MINUTE,
        phone_number=draw(st.sampled_from(list(PHONES))),
        success=success,
        reason="ok" if success else draw(st.sampled_from(FAILURE_REASONS)),
        auth_method=draw(st.sampled_from(["password", "pin", None])),
        user_id=draw(st.sampled_from([None, 1, 2])),
        ip_address=draw(st.sampled_from(ADDRESSES)),
    )


def moments() -> st.SearchStrategy[str]:
    """Times on, between and around the rows' minutes, written in several ISO-8601 forms."""
    minutes = st.integers(-1, 14)
    on_the_minute = minutes.map(lambda m: (BASE_TIME + m * MINUTE).isoformat().replace("+00:00", "Z"))
    in_kigali = minutes.map(
        lambda m: (BASE_TIME + m * MINUTE).astimezone(datetime.timezone(datetime.timedelta(hours=2))).isoformat()
    )
    between = minutes.map(lambda m: (BASE_TIME + m * MINUTE + datetime.timedelta(seconds=30)).isoformat())
    return st.one_of(on_the_minute, in_kigali, between)


filter_params = st.fixed_dictionaries(
    {},
    optional={
        "phone_number": st.sampled_from([typed for forms in PHONES.values() for typed in forms]),
        "ip": st.sampled_from(NETWORKS),
        "success": st.sampled_from(["true", "false", "1", "no"]),
        "reason": st.lists(st.sampled_from(list(REASONS)), min_size=1, max_size=3).map(",".join),
        "auth_method": st.sampled_from(["password", "pin", "PIN"]),
        "user_id": st.sampled_from(["1", "2", "3"]),
        "since": moments(),
        "until": moments(),
    },
)


def stored_phone(typed: str) -> str:
    return next(stored for stored, forms in PHONES.items() if typed in forms)


def matches(row: Row, params: dict[str, str]) -> bool:
    """The filters, written again in Python from their definitions."""
    if "phone_number" in params and row.phone_number != stored_phone(params["phone_number"]):
        return False
    if "ip" in params:
        network = ipaddress.ip_network(params["ip"], strict=False)
        if row.ip_address is None or ipaddress.ip_address(row.ip_address) not in network:
            return False
    if "success" in params and row.success != (params["success"] in ("true", "1")):
        return False
    if "reason" in params and row.reason not in params["reason"].split(","):
        return False
    if "auth_method" in params and row.auth_method != params["auth_method"].lower():
        return False
    if "user_id" in params and row.user_id != int(params["user_id"]):
        return False
    if "since" in params and row.created_at < datetime.datetime.fromisoformat(params["since"]):
        return False
    return not ("until" in params and row.created_at >= datetime.datetime.fromisoformat(params["until"]))


def newest_first(selected: list[Row]) -> list[int]:
    return [row.id for row in sorted(selected, key=lambda r: (r.created_at, r.id), reverse=True)]  # type: ignore[misc]


def bounds_are_ordered(params: dict[str, str]) -> bool:
    if "since" in params and "until" in params:
        return datetime.datetime.fromisoformat(params["until"]) > datetime.datetime.fromisoformat(params["since"])
    return True


def with_table(dsn: str, inserted: list[Row], check: Callable[[Any], Awaitable[None]]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("TRUNCATE login_attempts")
            await insert_rows(conn, inserted)
            await check(conn)
        finally:
            await conn.close()

    asyncio.run(run())


PROPERTY = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@PROPERTY
@given(inserted=st.lists(rows(), max_size=30), params=filter_params, limit=st.integers(1, 7))
def test_paged_results_are_exactly_the_matching_rows_newest_first(settings, inserted, params, limit):
    if not bounds_are_ordered(params):
        return

    async def check(conn: Any) -> None:
        request = parse_page_request({**params, "limit": str(limit)}, "RW")
        seen: list[int] = []
        pages = 0
        while True:
            page = await fetch_page(conn, request)
            pages += 1
            assert len(page.items) <= limit
            seen += [item.id for item in page.items]
            if page.next_cursor is None:
                break
            assert len(page.items) == limit
            request = parse_page_request({**params, "limit": str(limit), "cursor": page.next_cursor}, "RW")
        expected = newest_first([row for row in inserted if matches(row, params)])
        assert seen == expected
        assert pages == max(1, -(-len(expected) // limit))

    with_table(plain_dsn(settings), inserted, check)


@PROPERTY
@given(inserted=st.lists(rows(), max_size=30), params=filter_params)
def test_export_has_exactly_the_matching_rows(settings, inserted, params):
    if not bounds_are_ordered(params):
        return

    async def check(conn: Any) -> None:
        filters = parse_page_request(params, "RW").filters

        @asynccontextmanager
        async def connect() -> AsyncIterator[Any]:
            yield conn

        body = b"".join([chunk async for chunk in export_chunks(connect, filters, "ndjson")])
        exported = [json.loads(line)["id"] for line in body.splitlines()]
        assert exported == newest_first([row for row in inserted if matches(row, params)])

    with_table(plain_dsn(settings), inserted, check)


@PROPERTY
@given(inserted=st.lists(rows(), max_size=30), bucket=st.sampled_from(["minute", "hour"]))
def test_summary_counts_agree_with_the_rows(settings, inserted, bucket):
    since, until = BASE_TIME, BASE_TIME + 10 * MINUTE

    async def check(conn: Any) -> None:
        request = parse_summary_request(
            {"since": since.isoformat(), "until": until.isoformat(), "bucket": bucket, "top": "100"}, "RW"
        )
        summary = await summarise(conn, request)
        in_range = [row for row in inserted if since <= row.created_at < until]
        refusals = [row for row in in_range if row.reason in REFUSAL_REASONS]
        successes = [row for row in in_range if row.success]
        assert summary.totals.attempts == len(in_range)
        assert summary.totals.successes == len(successes)
        assert summary.totals.refusals == len(refusals)
        assert summary.totals.failures == len(in_range) - len(successes) - len(refusals)
        length = MINUTE if bucket == "minute" else datetime.timedelta(hours=1)
        assert [b.start for b in summary.buckets] == [since + n * length for n in range(len(summary.buckets))]
        for b in summary.buckets:
            inside = [row for row in in_range if b.start <= row.created_at < b.start + length]
            assert b.successes + b.failures + b.refusals == len(inside)
        by_phone = {p.phone_number: p for p in summary.top_phone_numbers}
        for phone in {row.phone_number for row in in_range}:
            mine = [row for row in in_range if row.phone_number == phone]
            assert by_phone[phone].attempts == len(mine)
            assert by_phone[phone].refusals == sum(row.reason in REFUSAL_REASONS for row in mine)
        failures = [p.failures for p in summary.top_phone_numbers]
        assert failures == sorted(failures, reverse=True)
        locked = {row.phone_number for row in in_range if row.reason == "pin_locked"}
        assert {p.phone_number for p in summary.pin_locked} == locked

    with_table(plain_dsn(settings), inserted, check)


def test_cursor_survives_every_microsecond_and_id():
    @given(
        st.datetimes(
            min_value=datetime.datetime(1970, 1, 1),
            max_value=datetime.datetime(2200, 1, 1),
            timezones=st.just(datetime.UTC),
        ),
        st.integers(0, 2**63 - 1),
    )
    def round_trip(moment: datetime.datetime, row_id: int) -> None:
        cursor = decode_cursor(Cursor.after(moment, row_id).encode())
        assert cursor.created_at == moment and cursor.i == row_id

    round_trip()


def test_filters_describe_themselves_for_the_record():
    filters = parse_page_request(
        {"phone_number": "0788000001", "ip": "41.186.9.9/16", "success": "no", "reason": "pin_locked,ok"}, "RW"
    ).filters
    assert filters == AttemptFilters(
        phone_number="+250788000001",
        ip=ipaddress.ip_network("41.186.0.0/16"),
        success=False,
        reasons=("pin_locked", "ok"),
    )
    assert filters.describe() == {
        "phone_number": "+250788000001",
        "ip": "41.186.0.0/16",
        "success": False,
        "reason": "pin_locked,ok",
    }
