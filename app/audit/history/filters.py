"""Which login attempts to read: the filters, and the page request, from text.

One definition of every filter serves the API, the CLI, the export and the summary. Filters arrive
as text (query parameters, command-line options), are read by the one validator (params.py), and
every problem is reported at once as field errors.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.audit.history.cursor import Cursor, read_cursor
from app.audit.history.params import IPNetwork, Params
from app.audit.pipeline.events import AUTH_METHODS, CHANNELS, PHONE_MAX, REASONS
from app.core.phones import PhoneNumberError, normalise_phone

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
UTC = datetime.UTC
# The filter names, as query parameters and in recorded audit queries.
FILTER_FIELDS = ("phone_number", "ip", "success", "reason", "auth_method", "channel", "user_id", "since", "until")


@dataclass(frozen=True, slots=True)
class AttemptFilters:
    """Which attempts to read; ``None`` is "any". ``since`` is inclusive, ``until`` exclusive."""

    phone_number: str | None = None
    ip: IPNetwork | None = None
    success: bool | None = None
    reasons: tuple[str, ...] | None = None
    auth_method: str | None = None
    channel: str | None = None  # http (the login endpoint) or ussd (the gateway)
    user_id: int | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def describe(self) -> dict[str, Any]:
        """The filters that are set, as JSON values (recorded with every audit query)."""
        described: dict[str, Any] = {
            "phone_number": self.phone_number,
            "ip": str(self.ip) if self.ip is not None else None,
            "success": self.success,
            "reason": ",".join(self.reasons) if self.reasons else None,
            "auth_method": self.auth_method,
            "channel": self.channel,
            "user_id": self.user_id,
            "since": iso(self.since) if self.since else None,
            "until": iso(self.until) if self.until else None,
        }
        return {name: value for name, value in described.items() if value is not None}


def iso(moment: datetime.datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as msgspec writes datetimes in the JSON responses."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def phone_filter_value(raw: str, region: str) -> str:
    """What the login path stores for this input: E.164 when it parses, else the text cut to 20.

    So a number typed in any form finds its attempts, and junk an attacker sent as a phone number
    can be searched for as it was sent.
    """
    try:
        return normalise_phone(raw, region, strict=False)
    except PhoneNumberError:
        return raw[:PHONE_MAX]


def read_filters(params: Params, region: str) -> AttemptFilters:
    """The filters among ``params`` (named as in :data:`FILTER_FIELDS`); problems go to its errors."""
    phone = params.text("phone_number", strip=False)
    reasons = params.choices("reason", REASONS)
    auth_method = params.choice("auth_method", AUTH_METHODS, "Choose password or pin.")
    channel = params.choice("channel", CHANNELS, "Choose http, ussd or sms.")
    user_id = params.whole_number("user_id", message="Enter a user id (a positive whole number).")
    since, until = params.timestamp("since"), params.timestamp("until")
    if since is not None and until is not None and until <= since:
        params.errors.add("until", "until must be later than since.")
    return AttemptFilters(
        phone_number=phone_filter_value(phone, region) if phone is not None else None,
        ip=params.network("ip"),
        success=params.boolean("success"),
        reasons=reasons,
        auth_method=auth_method,
        channel=channel,
        user_id=user_id,
        since=since,
        until=until,
    )


def parse_filters(values: Mapping[str, str | None], region: str) -> AttemptFilters:
    params = Params(values)
    filters = read_filters(params, region)
    params.raise_if_any()
    return filters


def read_limit(params: Params, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    limit = params.whole_number("limit", maximum=maximum)
    return default if limit is None else limit


@dataclass(frozen=True, slots=True)
class PageRequest:
    filters: AttemptFilters
    cursor: Cursor | None = None
    limit: int = DEFAULT_LIMIT

    def describe(self) -> dict[str, Any]:
        described = self.filters.describe()
        described["limit"] = self.limit
        if self.cursor is not None:
            described["cursor"] = self.cursor.encode()
        return described


def parse_page_request(values: Mapping[str, str | None], region: str) -> PageRequest:
    """Filters plus ``cursor`` and ``limit``, every problem reported together."""
    params = Params(values)
    filters = read_filters(params, region)
    cursor = read_cursor(params)
    limit = read_limit(params)
    params.raise_if_any()
    return PageRequest(filters, cursor, limit)


# ---- the summary's request: its filters, bucket and top lists (summary.py and rollups.py both read it)

Bucket = Literal["minute", "hour", "day"]
DEFAULT_TOP = 10


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    filters: AttemptFilters  # since and until always set
    bucket: Bucket = "hour"
    top: int = DEFAULT_TOP

    @property
    def since(self) -> datetime.datetime:
        assert self.filters.since is not None
        return self.filters.since

    @property
    def until(self) -> datetime.datetime:
        assert self.filters.until is not None
        return self.filters.until

    def describe(self) -> dict[str, Any]:
        return {**self.filters.describe(), "bucket": self.bucket, "top": self.top}
