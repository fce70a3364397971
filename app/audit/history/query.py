"""Reading the login history: filters, their validation, and the keyset-paged SQL.

One definition of every filter serves the API, the CLI, the export and the summary. Filters arrive
as text (query parameters, command-line options) and every problem is reported at once as field
errors. The SQL runs on a plain asyncpg connection, as the audit writer's does; values always travel
as bind parameters.

Pages are ordered newest first by ``(created_at, id)``; the cursor is the position of the last row
shown, so a page never repeats or skips a row however many newer rows arrive meanwhile (they sort
before the cursor). Each index of ``login_attempts`` ends in ``(created_at, id)``, which makes a
filtered page one backward index scan that stops after ``limit`` rows.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline.events import AUTH_METHODS, PHONE_MAX, REASONS
from app.core.errors import AppError, FieldErrors
from app.core.phones import PhoneNumberError, normalise_phone

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Outcome = Literal["success", "failure", "refusal"]

# The service refused to check the credential (budget spent, locked, limiter down). Every other
# unsuccessful attempt is a failure, ``invalid_request`` included: the client did try to sign in,
# and attack tools send malformed requests too.
REFUSAL_REASONS = ("rate_limited", "account_locked", "pin_locked", "limiter_unavailable")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
INT64_MAX = 2**63 - 1
UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
# The filter names, as query parameters and in recorded audit queries.
FILTER_FIELDS = ("phone_number", "ip", "success", "reason", "auth_method", "user_id", "since", "until")
# An API page or summary that runs longer than this is stopped (export and CLI have no limit).
API_STATEMENT_TIMEOUT_MS = 15_000


class AuditQueryTimeout(AppError):
    status_code = 503
    code = "audit_query_timeout"
    message = "This query took too long. Narrow the time range or filter by phone number or IP address."


def outcome_of(success: bool, reason: str) -> Outcome:
    if success:
        return "success"
    return "refusal" if reason in REFUSAL_REASONS else "failure"


# ---- filters -------------------------------------------------------------------------------------


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


Errors = FieldErrors  # the name the audit modules use


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


# ---- cursor --------------------------------------------------------------------------------------


class Cursor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The position of the last row of a page: its ``created_at`` (microseconds since 1970) and id."""

    t: int
    i: int

    @classmethod
    def after(cls, created_at: datetime.datetime, row_id: int) -> Cursor:
        delta = created_at - EPOCH
        return cls(t=(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, i=row_id)

    @property
    def created_at(self) -> datetime.datetime:
        return EPOCH + datetime.timedelta(microseconds=self.t)

    def encode(self) -> str:
        return base64.urlsafe_b64encode(msgspec.json.encode(self)).rstrip(b"=").decode()


_cursor_decoder = msgspec.json.Decoder(Cursor)
CURSOR_MAX_LENGTH = 200


def decode_cursor(token: str) -> Cursor:
    """ValueError for anything that is not a cursor this module made (tampered, truncated, foreign)."""
    if len(token) > CURSOR_MAX_LENGTH:
        raise ValueError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = _cursor_decoder.decode(raw)
        _ = cursor.created_at  # in datetime's range
    except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError, OverflowError, ValueError) as exc:
        raise ValueError("not a cursor") from exc
    if not 0 <= cursor.i <= INT64_MAX:
        raise ValueError("cursor id out of range")
    return cursor


def read_cursor(value: str | None, errors: Errors) -> Cursor | None:
    if value is None or not value.strip():
        return None
    try:
        return decode_cursor(value.strip())
    except ValueError:
        errors.add("cursor", "This cursor is not valid. Start again from the first page.")
        return None


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


# ---- SQL -----------------------------------------------------------------------------------------


@dataclass
class SqlParams:
    """Bind parameters in order: ``params.add(value)`` returns its ``$n`` placeholder."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filter_conditions(filters: AttemptFilters, params: SqlParams) -> list[str]:
    """WHERE conditions for ``filters``; column names are constants, values are parameters."""
    conditions: list[str] = []
    if filters.phone_number is not None:
        conditions.append(f"phone_number = {params.add(filters.phone_number)}")
    if filters.ip is not None:
        network = filters.ip
        if network.num_addresses == 1:
            # An equality: the (ip_address, created_at, id) index then gives the rows in page order.
            conditions.append(f"ip_address = {params.add(network.network_address)}::inet")
        else:
            # Postgres turns ``<<=`` with a known network into a range on the btree (custom plans).
            conditions.append(f"ip_address <<= {params.add(network)}::inet")
    if filters.success is not None:
        conditions.append("success" if filters.success else "NOT success")
    if filters.reasons is not None:
        if len(filters.reasons) == 1:
            conditions.append(f"reason = {params.add(filters.reasons[0])}")
        else:
            conditions.append(f"reason = ANY({params.add(list(filters.reasons))}::text[])")
    if filters.auth_method is not None:
        conditions.append(f"auth_method = {params.add(filters.auth_method)}")
    if filters.user_id is not None:
        conditions.append(f"user_id = {params.add(filters.user_id)}")
    if filters.since is not None:
        conditions.append(f"created_at >= {params.add(filters.since)}")
    if filters.until is not None:
        conditions.append(f"created_at < {params.add(filters.until)}")
    return conditions


def where(conditions: list[str]) -> str:
    return "WHERE " + "\n    AND ".join(conditions) if conditions else ""


NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"
ATTEMPT_COLUMNS = (
    "id, event_id, created_at, phone_number, user_id, success, auth_method, reason, "
    "host(ip_address) AS ip_address, user_agent, request_id"
)


def page_sql(request: PageRequest) -> tuple[str, list[Any]]:
    """One page plus one row, whose presence says whether there is a next page.

    The page's ids are chosen first and its rows read second (a deferred join): choosing needs only
    ``(created_at, id)`` and the filtered column, which an index holds, so a CIDR filter over tens of
    thousands of rows sorts index entries instead of reading every matching row from the table.
    """
    params = SqlParams()
    conditions = filter_conditions(request.filters, params)
    if request.cursor is not None:
        t, i = params.add(request.cursor.created_at), params.add(request.cursor.i)
        conditions.append(f"(created_at, id) < ({t}, {i})")
    sql = f"""SELECT {ATTEMPT_COLUMNS}
FROM login_attempts
WHERE id = ANY(ARRAY(
    SELECT id FROM login_attempts
    {where(conditions)}
    {NEWEST_FIRST}
    LIMIT {params.add(request.limit + 1)}))
{NEWEST_FIRST}"""  # noqa: S608 (column names are constants, values are parameters)
    return sql, params.values


class AttemptView(msgspec.Struct, kw_only=True):
    """One login attempt as the API and ``audit query --json`` show it."""

    id: int
    event_id: uuid.UUID
    created_at: datetime.datetime
    phone_number: str
    user_id: int | None
    success: bool
    outcome: Outcome
    reason: str
    auth_method: str | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None


class AttemptPage(msgspec.Struct, kw_only=True):
    items: list[AttemptView]
    next_cursor: str | None


def _view(row: Mapping[str, Any]) -> AttemptView:
    return AttemptView(
        id=row["id"],
        event_id=row["event_id"],
        created_at=row["created_at"],
        phone_number=row["phone_number"],
        user_id=row["user_id"],
        success=row["success"],
        outcome=outcome_of(row["success"], row["reason"]),
        reason=row["reason"],
        auth_method=row["auth_method"],
        ip_address=row["ip_address"],
        user_agent=row["user_agent"],
        request_id=row["request_id"],
    )


async def fetch_page(conn: Any, request: PageRequest) -> AttemptPage:
    """One page of attempts, newest first, on an asyncpg connection."""
    sql, args = page_sql(request)
    rows = await conn.fetch(sql, *args)
    items = [_view(row) for row in rows[: request.limit]]
    next_cursor = None
    if len(rows) > request.limit:
        last = items[-1]
        next_cursor = Cursor.after(last.created_at, last.id).encode()
    return AttemptPage(items=items, next_cursor=next_cursor)


# ---- connections ---------------------------------------------------------------------------------


@asynccontextmanager
async def pooled_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under one of the app's pooled SQLAlchemy connections."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        yield raw.driver_connection


@asynccontextmanager
async def read_transaction(
    engine: AsyncEngine, *, timeout_ms: int | None = None, snapshot: bool = False
) -> AsyncIterator[Any]:
    """An asyncpg connection from the app's pool, inside one transaction, set up for audit reads.

    ``snapshot``: REPEATABLE READ, so several statements (a summary) see the same rows.

    Plans are made for the actual values (``force_custom_plan``): asyncpg prepares every statement,
    and a generic plan cannot tell a phone with ten rows from one with ten thousand, nor a /16 of a
    mobile carrier from an empty one.
    """
    async with pooled_connection(engine) as conn, conn.transaction(isolation="repeatable_read" if snapshot else None):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        if timeout_ms is not None:
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        yield conn
