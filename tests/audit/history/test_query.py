"""Audit filters as text: what they become, and how each problem is reported."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from app.audit.history.attempts import outcome_of
from app.audit.history.commands import printable
from app.audit.history.cursor import Cursor, decode_cursor
from app.audit.history.filters import (
    DEFAULT_LIMIT,
    AttemptFilters,
    parse_filters,
    parse_page_request,
    phone_filter_value,
)
from app.audit.history.sql import page_sql
from app.audit.history.summary import MAX_BUCKETS, parse_summary_request
from app.core.errors import ValidationFailed

UTC = datetime.UTC


def fields_in_error(params: dict[str, str]) -> set[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse_page_request(params, "RW")
    return {error.field for error in caught.value.errors}


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("0788123456", "+250788123456"),
        ("+250 788 123 456", "+250788123456"),
        ("250788123456", "+250788123456"),
        ("+254712345678", "+254712345678"),
        ("not a phone", "not a phone"),  # junk is searched as the login path stored it
        ("x" * 30, "x" * 20),
    ],
)
def test_phone_numbers_are_searched_as_stored_at_sign_in(typed, stored):
    assert phone_filter_value(typed, "RW") == stored


def test_blank_parameters_are_absent():
    assert parse_filters({"phone_number": "", "ip": "  ", "success": None}, "RW") == AttemptFilters()
    assert parse_page_request({"limit": "", "cursor": ""}, "RW").limit == DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30", datetime.datetime(2026, 11, 30, tzinfo=UTC)),
        ("2026-11-30T14:00:00Z", datetime.datetime(2026, 11, 30, 14, tzinfo=UTC)),
        ("2026-11-30T16:00:00+02:00", datetime.datetime(2026, 11, 30, 14, tzinfo=UTC)),
        ("2026-11-30 14:00", datetime.datetime(2026, 11, 30, 14, tzinfo=UTC)),
    ],
)
def test_times_in_iso_8601_forms(text, expected):
    assert parse_filters({"since": text}, "RW").since == expected


def test_networks_are_normalised_and_single_addresses_are_equalities():
    filters = parse_filters({"ip": "41.186.77.1/16"}, "RW")
    assert filters.ip == ipaddress.ip_network("41.186.0.0/16")
    sql, args = page_sql(parse_page_request({"ip": "2c0f:eb68::1"}, "RW"))
    assert "ip_address = $1::inet" in sql and args[0] == ipaddress.ip_address("2c0f:eb68::1")
    sql, _ = page_sql(parse_page_request({"ip": "2c0f:eb68::/32"}, "RW"))
    assert "ip_address <<= $1::inet" in sql


def test_every_bad_field_is_named_at_once():
    params = {
        "ip": "1.2.3.4.5",
        "success": "yes please",
        "reason": "bored",
        "auth_method": "otp",
        "user_id": "0",
        "since": "last week",
        "until": "soon",
        "cursor": "%%%",
        "limit": "5000",
    }
    assert fields_in_error(params) == set(params)


def test_values_never_enter_the_sql_text():
    evil = "'; DROP TABLE users; --"
    sql, args = page_sql(parse_page_request({"phone_number": evil, "reason": "ok,pin_locked"}, "RW"))
    assert "DROP" not in sql
    assert evil[:20] in args and ["ok", "pin_locked"] in args


def test_cursors_refuse_tampering():
    good = Cursor.after(datetime.datetime(2026, 11, 20, tzinfo=UTC), 5).encode()
    assert decode_cursor(good).i == 5
    for bad in ("", good[:-4], good + "AA", "eyJ0IjoxLCJpIjotMX0", "eyJ0IjoxfQ", "eyJ0IjoxLCJpIjoxLCJ4IjoxfQ", "🙂"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


def test_outcomes():
    assert outcome_of(True, "ok") == "success"
    assert outcome_of(False, "invalid_request") == "failure"
    assert {outcome_of(False, r) for r in ("rate_limited", "account_locked", "pin_locked", "limiter_unavailable")} == {
        "refusal"
    }


def test_summary_range_defaults_to_the_last_day_and_limits_buckets():
    now = datetime.datetime(2026, 11, 27, 10, 30, tzinfo=UTC)
    request = parse_summary_request({}, "RW", now=now)
    assert (request.since, request.until, request.bucket) == (now - datetime.timedelta(days=1), now, "hour")
    request = parse_summary_request({"since": "2026-11-20"}, "RW", now=now)
    assert request.until == now
    request = parse_summary_request({"until": "2026-11-20"}, "RW", now=now)
    assert request.since == datetime.datetime(2026, 11, 19, tzinfo=UTC)
    too_fine = {"since": "2026-01-01", "until": "2026-02-01", "bucket": "minute"}
    with pytest.raises(ValidationFailed) as caught:
        parse_summary_request(too_fine, "RW", now=now)
    assert caught.value.errors[0].field == "bucket" and f"{MAX_BUCKETS:,}" in caught.value.errors[0].message
    with pytest.raises(ValidationFailed):
        parse_summary_request({"since": "2026-12-01"}, "RW", now=now)  # since after the default until


def test_terminal_output_escapes_control_characters():
    assert printable("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert printable("x" * 10, 5) == "xxxx…"
    assert printable(None) == "-"
