"""Which login attempts to read: the filters, and the page request, from text.

One definition of every filter serves the API, the CLI, the export and the summary. Filters arrive
as text (query parameters, command-line options) and every problem is reported at once as field
errors.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.audit.history.cursor import INT64_MAX, Cursor, read_cursor
from app.audit.pipeline.events import AUTH_METHODS, PHONE_MAX, REASONS
from app.core.errors import FieldErrors
from app.core.phones import PhoneNumberError, normalise_phone

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
UTC = datetime.UTC
# The filter names, as query parameters and in recorded audit queries.
FILTER_FIELDS = ("phone_number", "ip", "success", "reason", "auth_method", "user_id", "since", "until")

Errors = FieldErrors  # the name the audit modules use


@dataclass(frozen=True, slots=True)
class AttemptFilters:
    """Which attempts to read; ``None`` is "any". ``since`` is inclusive, ``until`` exclusive."""

    phone_number: str | None = None
    ip: IPNetwork | None = None
    success: bool | None = None
    reasons: tuple[str, ...] | None = None
    auth_method: str | None = None
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
            "user_id": self.user_id,
            "since": iso(self.since) if self.since else None,
            "until": iso(self.until) if self.until else None,
        }
        return {name: value for name, value in described.items() if value is not None}


def iso(moment: datetime.datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as msgspec writes datetimes in the JSON responses."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(params: Mapping[str, str | None], name: str) -> str | None:
    """A parameter's value; blank counts as absent (forms send empty fields)."""
    value = params.get(name)
    if value is None or not value.strip():
        return None
    return value


def phone_filter_value(raw: str, region: str) -> str:
    """What the login path stores for this input: E.164 when it parses, else the text cut to 20.

    So a number typed in any form finds its attempts, and junk an attacker sent as a phone number
    can be searched for as it was sent.
    """
    try:
        return normalise_phone(raw, region, strict=False)
    except PhoneNumberError:
        return raw[:PHONE_MAX]


def parse_timestamp(value: str) -> datetime.datetime:
    """ISO-8601 date or date-time; without an offset it is UTC. ValueError when it is neither."""
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(value)


def read_filters(params: Mapping[str, str | None], region: str, errors: Errors) -> AttemptFilters:
    """The filters in ``params`` (text values keyed by :data:`FILTER_FIELDS`); problems go to ``errors``."""
    phone = _text(params, "phone_number")
    network: IPNetwork | None = None
    if (ip := _text(params, "ip")) is not None:
        try:
            network = ipaddress.ip_network(ip.strip(), strict=False)
        except ValueError:
            errors.add("ip", "Enter an IP address or a network in CIDR form, e.g. 41.186.0.0/16.")
    success: bool | None = None
    if (raw_success := _text(params, "success")) is not None:
        try:
            success = parse_bool(raw_success)
        except ValueError:
            errors.add("success", "Enter true or false.")
    reasons: tuple[str, ...] | None = None
    if (raw_reasons := _text(params, "reason")) is not None:
        reasons = tuple(dict.fromkeys(part.strip() for part in raw_reasons.split(",") if part.strip()))
        unknown = [reason for reason in reasons if reason not in REASONS]
        if unknown or not reasons:
            errors.add("reason", f"Unknown reason {', '.join(unknown)}. Choose from: {', '.join(REASONS)}.")
    auth_method = _text(params, "auth_method")
    if auth_method is not None:
        auth_method = auth_method.strip().lower()
        if auth_method not in AUTH_METHODS:
            errors.add("auth_method", "Choose password or pin.")
    user_id: int | None = None
    if (raw_user := _text(params, "user_id")) is not None:
        try:
            user_id = int(raw_user.strip())
        except ValueError:
            errors.add("user_id", "Enter a whole number.")
        else:
            if not 0 < user_id <= INT64_MAX:
                errors.add("user_id", "Enter a user id (a positive whole number).")
    bounds: dict[str, datetime.datetime] = {}
    for name in ("since", "until"):
        if (raw_moment := _text(params, name)) is not None:
            try:
                bounds[name] = parse_timestamp(raw_moment)
            except (ValueError, OverflowError):
                errors.add(name, "Enter an ISO-8601 date or time, e.g. 2026-11-30 or 2026-11-30T14:00:00Z.")
    since, until = bounds.get("since"), bounds.get("until")
    if since is not None and until is not None and until <= since:
        errors.add("until", "until must be later than since.")
    return AttemptFilters(
        phone_number=phone_filter_value(phone, region) if phone is not None else None,
        ip=network,
        success=success,
        reasons=reasons,
        auth_method=auth_method,
        user_id=user_id,
        since=since,
        until=until,
    )


def parse_filters(params: Mapping[str, str | None], region: str) -> AttemptFilters:
    errors = Errors()
    filters = read_filters(params, region, errors)
    errors.raise_if_any()
    return filters


def read_limit(value: str | None, errors: Errors, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if value is None or not value.strip():
        return default
    try:
        limit = int(value.strip())
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        errors.add("limit", f"Enter a whole number from 1 to {maximum:,}.")
        return default
    return limit


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


def parse_page_request(params: Mapping[str, str | None], region: str) -> PageRequest:
    """Filters plus ``cursor`` and ``limit``, every problem reported together."""
    errors = Errors()
    filters = read_filters(params, region, errors)
    cursor = read_cursor(params.get("cursor"), errors)
    limit = read_limit(params.get("limit"), errors)
    errors.raise_if_any()
    return PageRequest(filters, cursor, limit)
