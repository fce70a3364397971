"""Per-row rules of the legacy import: what one Flask-era row becomes here, and what is noted about it.

Pure functions of the row (and of the settings' phone region): the same row always gives the same
result, which is what makes a rerun, or a run resumed after a crash, write exactly what one clean run
writes. docs/legacy-import.md states every rule in words; the report's ``problem`` names come from here.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.accounts.forms import CYCLE_LENGTH_RANGE, PERIOD_LENGTH_RANGE, SESSION_TIMEOUT_RANGE
from app.accounts.names import (
    ALLOWED_FORMAT_CHARACTERS,
    NAME_MAX_LENGTH,
    REFUSED_CATEGORIES,
    name_problem,
    normalise_name,
)
from app.core.phones import PhoneNumberError, normalise_phone
from app.db.models import STAFF_USER_TYPES, USER_TYPES

UTC = datetime.UTC
BCRYPT_HASH = re.compile(r"\A\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
# The USSD channel stored the caller's number in the local form.
USSD_LOCAL_PHONE = re.compile(r"\A0[0-9]{9}\Z")
EMAIL_MAX = 254
FLASK_SESSION_TIMEOUT_DEFAULT = 2
# The Flask admin panel admitted this user_type: here it is support authority unless a role grants more,
# so such a row is imported only when ``--staff-role admin=...`` says what it is granted.
PANEL_USER_TYPE = "admin"
# What ``--staff-role USER_TYPE=GRANT`` may grant, and the role column each grant stores. ``support`` is
# the panel's user_type with no role above it, so only PANEL_USER_TYPE can be granted it.
STAFF_GRANTS: dict[str, str] = {"support": "user", "security": "security", "admin": "admin"}
FAMILY_MANAGED = "family_managed"
DETAIL_MAX = 200
# Flask-era column defaults, for NULLs in columns that had one.
FLASK_BOOLEAN_DEFAULTS = {
    "is_active": True,
    "enable_pin_auth": False,
    "has_provided_cycle_info": False,
    "is_phone_verified": False,
    "allow_parent_access": True,
    "data_sharing_consent": False,
}


@dataclass(frozen=True, slots=True)
class Note:
    """Something the import changed about an account it imported (or would import)."""

    id: int
    field: str
    problem: str
    was: Any = None
    now: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "field": self.field, "problem": self.problem, "was": self.was, "now": self.now}


@dataclass(slots=True)
class UserRow:
    """A Flask-era user as this service stores it (before the collision decisions)."""

    values: dict[str, Any]
    notes: list[Note] = field(default_factory=list)
    raw_phone: str | None = None
    phone: str | None = None  # E.164, or None
    email_key: str | None = None  # lower-cased email, what this service keeps unique
    has_pin: bool = False
    ussd_created: bool = False
    staff: bool = False
    granted: str | None = None  # the staff authority --staff-role granted (its credentials were not imported)
    refusal: tuple[str, str] | None = None  # (reason, detail): the row is read and planned, never written


@functools.lru_cache(maxsize=1 << 18)
def sign_in_phone(raw: str, region: str) -> str | None:
    """The number as sign-in normalises what a client types (E.164), or None if sign-in would refuse it."""
    try:
        return normalise_phone(raw, region, strict=False)
    except PhoneNumberError:
        return None


def as_utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """Flask wrote ``datetime.utcnow()`` into columns without a time zone: naive values are UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def is_bcrypt(value: str | None) -> bool:
    return value is not None and BCRYPT_HASH.match(value) is not None


def clean_email(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    return text or None


def parse_preferences(value: str | None) -> tuple[dict[str, Any] | None, bool]:
    """(preferences, parsed): empty text is no preferences; text that is not a JSON object is not parsed."""
    if value is None or not value.strip():
        return None, True
    try:
        parsed = json.loads(value)
    except ValueError:
        return None, False
    if not isinstance(parsed, dict):
        return None, False
    return parsed, True


def _refused_in_name(ch: str) -> bool:
    return unicodedata.category(ch) in REFUSED_CATEGORIES and ch not in ALLOWED_FORMAT_CHARACTERS


def clean_name(raw: str | None) -> str:
    """The name as registration would have accepted it: whitespace runs collapsed and the characters
    registration refuses (controls, direction overrides, invisible format characters) removed.

    Registration refuses such a name; an imported account cannot be asked again, so the import keeps
    what is left (possibly nothing: the report lists it) and never what was stored.
    """
    kept = "".join(ch for ch in normalise_name(raw) if not _refused_in_name(ch))
    name = normalise_name(kept)[:NAME_MAX_LENGTH].strip()
    assert name_problem(name) is None, name
    return name


def shown(text: str) -> str:
    """``text`` for the report: every refused character as a ``\\uXXXX`` escape, so the report reads as stored."""
    escaped = "".join(f"\\u{ord(ch):04x}" if _refused_in_name(ch) else ch for ch in text)
    return escaped[:DETAIL_MAX]


def _in(value: int | None, bounds: tuple[int, int]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def user_row(
    row: Mapping[str, Any],
    *,
    region: str,
    unusable_password_hash: str,
    staff_roles: Mapping[str, str],
    imported_at: datetime.datetime,
) -> UserRow:
    """What one source ``users`` row becomes, phone and email still subject to the collision decisions."""
    user_id: int = row["id"]
    notes: list[Note] = []

    def note(field_name: str, problem: str, was: Any = None, now: Any = None) -> None:
        notes.append(Note(user_id, field_name, problem, was, now))

    raw_phone = row["phone_number"].strip() if row["phone_number"] is not None else None
    phone = sign_in_phone(raw_phone, region) if raw_phone else None
    if raw_phone and phone is None:
        note("phone_number", "phone_not_a_number", raw_phone, None)
    elif not raw_phone and row["account_type"] != FAMILY_MANAGED:
        note("phone_number", "no_phone", raw_phone, None)

    email = clean_email(row["email"])
    if email is not None and len(email) > EMAIL_MAX:
        note("email", "email_too_long", email[:DETAIL_MAX], None)
        email = None

    password_hash = row["password_hash"]
    if not is_bcrypt(password_hash):
        note("password_hash", "password_hash_unrecognised", (password_hash or "")[:7] + "...", "unusable")
        password_hash = unusable_password_hash
    pin_hash = row["pin_hash"]
    enable_pin_auth = row["enable_pin_auth"]
    if pin_hash is not None and not pin_hash.strip():
        pin_hash = None
    if pin_hash is not None and not is_bcrypt(pin_hash):
        note("pin_hash", "pin_hash_unrecognised", pin_hash[:7] + "...", None)
        pin_hash = None
        enable_pin_auth = False

    raw_name = row["name"] or ""
    name = clean_name(raw_name)
    if name != raw_name:
        if not name:
            problem = "name_empty"
        elif any(_refused_in_name(ch) for ch in normalise_name(raw_name)):  # tabs and newlines are whitespace
            problem = "name_refused_characters"
        else:
            problem = "name_whitespace"
        note("name", problem, shown(raw_name), name)

    raw_type = row["user_type"] or ""
    user_type = raw_type.strip().lower()
    refusal: tuple[str, str] | None = None
    if user_type not in USER_TYPES:
        user_type = raw_type
        refusal = ("user_type_unknown", f"user_type '{shown(raw_type)}' is none of {', '.join(USER_TYPES)}")
    elif user_type != raw_type:
        note("user_type", "user_type_normalised", shown(raw_type), user_type)
    staff = user_type in STAFF_USER_TYPES
    granted = staff_roles.get(user_type) if staff else None
    if user_type == PANEL_USER_TYPE and granted is None:
        refusal = (
            "staff_role_required",
            "user_type admin was the Flask admin panel; it is imported only as granted staff:"
            " --staff-role admin=support|security|admin",
        )
    role = STAFF_GRANTS[granted] if granted is not None else "user"
    if granted is not None:
        # Granting staff authority trusts no credential the Flask era kept (as promotion does):
        # the operator sets one through the CLI after the import (docs/legacy-import.md).
        note("password_hash", "staff_credentials_not_imported", None, "unusable")
        password_hash = unusable_password_hash
        pin_hash = None
        enable_pin_auth = False

    created_at = as_utc(row["created_at"])
    updated_at = as_utc(row["updated_at"])
    last_activity = as_utc(row["last_activity"])
    if created_at is None:
        created_at = updated_at or last_activity or imported_at
        note("created_at", "created_at_missing", None, created_at.isoformat())
    if updated_at is None:
        updated_at = created_at

    preferences, parsed = parse_preferences(row["notification_preferences"])
    if not parsed:
        note(
            "notification_preferences",
            "notification_preferences_unparsable",
            row["notification_preferences"][:DETAIL_MAX],
        )

    timeout = row["session_timeout_minutes"]
    if timeout is None:
        timeout = FLASK_SESSION_TIMEOUT_DEFAULT
    elif not _in(timeout, SESSION_TIMEOUT_RANGE):
        clamped = min(max(timeout, SESSION_TIMEOUT_RANGE[0]), SESSION_TIMEOUT_RANGE[1])
        note("session_timeout_minutes", "out_of_range_clamped", timeout, clamped)
        timeout = clamped
    cycle = row["personal_cycle_length"]
    if cycle is not None and not _in(cycle, CYCLE_LENGTH_RANGE):
        note("personal_cycle_length", "out_of_range_nulled", cycle, None)
        cycle = None
    period = row["personal_period_length"]
    if period is not None and not _in(period, PERIOD_LENGTH_RANGE):
        note("personal_period_length", "out_of_range_nulled", period, None)
        period = None

    booleans = {name: default if row[name] is None else row[name] for name, default in FLASK_BOOLEAN_DEFAULTS.items()}
    if enable_pin_auth is None:
        enable_pin_auth = FLASK_BOOLEAN_DEFAULTS["enable_pin_auth"]
    booleans["enable_pin_auth"] = enable_pin_auth

    has_pin = pin_hash is not None
    session_data = row["current_session_data"]
    ussd_created = (
        has_pin
        and is_bcrypt(row["password_hash"])
        and (
            bool(session_data and session_data.strip())
            or (email is None and bool(raw_phone and USSD_LOCAL_PHONE.match(raw_phone)))
        )
    )
    values: dict[str, Any] = {
        "id": user_id,
        "name": name,
        "phone_number": phone,
        "email": email,
        "password_hash": password_hash,
        "user_type": user_type,
        "role": role,
        "pin_hash": pin_hash,
        "personal_cycle_length": cycle,
        "personal_period_length": period,
        "last_activity": last_activity,
        "current_session_data": session_data,
        "session_timeout_minutes": timeout,
        "account_type": row["account_type"],
        "notification_preferences": json.dumps(preferences) if preferences is not None else None,
        "created_at": created_at,
        "updated_at": updated_at,
        **booleans,
    }
    return UserRow(
        values=values,
        notes=notes,
        raw_phone=raw_phone,
        phone=phone,
        email_key=email.lower() if email else None,
        has_pin=has_pin,
        ussd_created=ussd_created,
        staff=staff,
        granted=granted,
        refusal=refusal,
    )


# ---- login history ------------------------------------------------------------------------------

_EVENT_MARKER = "7f1a"  # version 7, then the 12 "rand_a" bits of every imported event id: recognisable
_VARIANT = 0b10 << 62
_ID_MASK = (1 << 62) - 1
_MS_MASK = (1 << 48) - 1
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


def legacy_event_id(created_at: datetime.datetime, source_id: int) -> str:
    """A UUIDv7-shaped id from the row's time and its source id: the same row always gets the same id
    (so a rerun inserts nothing), ids sort by time like the service's own, and no two rows share one.

    Layout: 48 bits of milliseconds, version 7, the marker bits, the variant, 62 bits of source id.
    """
    ms = f"{int(created_at.timestamp() * 1000) & _MS_MASK:012x}"
    tail = f"{_VARIANT | (source_id & _ID_MASK):016x}"
    return f"{ms[:8]}-{ms[8:]}-{_EVENT_MARKER}-{tail[:4]}-{tail[4:]}"


@functools.lru_cache(maxsize=1 << 16)
def ip_or_note(raw: str | None) -> tuple[str | None, str | None]:
    """(address for ``ip_address``, text for ``legacy_ip``): an address goes in as one; anything else
    that is not empty is kept as typed in ``legacy_ip``."""
    if raw is None:
        return None, None
    text = raw.strip()
    if not text:
        return None, None
    try:
        return str(ipaddress.ip_address(text)), None
    except ValueError:
        return None, raw


@dataclass(slots=True)
class HistoryStats:
    read: int = 0
    ip_not_address: int = 0
    ip_empty: int = 0
    phone_as_typed: int = 0
    created_at_missing: int = 0
    last_time: datetime.datetime = EPOCH

    def as_dict(self) -> dict[str, int]:
        return {
            "read": self.read,
            "ip_not_address": self.ip_not_address,
            "ip_empty": self.ip_empty,
            "phone_as_typed": self.phone_as_typed,
            "created_at_missing": self.created_at_missing,
        }


# Column order of the history records (the COPY's columns).
HISTORY_COLUMNS = (
    "event_id",
    "created_at",
    "phone_number",
    "success",
    "reason",
    "ip_address",
    "user_agent",
    "source",
    "legacy_ip",
)


def history_records(rows: list[Any], region: str, stats: HistoryStats) -> list[tuple[Any, ...]]:
    """Source ``login_attempts`` rows (id order) as records in HISTORY_COLUMNS order.

    A row without a time takes the time of the row before it (ids were handed out in time order);
    the count is in the report. Phones are normalised as sign-in does, kept as typed otherwise.
    """
    records: list[tuple[Any, ...]] = []
    append = records.append
    last_time = stats.last_time
    for source_id, raw_phone, success, raw_ip, user_agent, created_at in rows:
        if created_at is None:
            stats.created_at_missing += 1
            created = last_time
        else:
            created = created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC)
            last_time = created
        phone = sign_in_phone(raw_phone, region) if raw_phone else None
        if phone is None:
            stats.phone_as_typed += 1
            phone = raw_phone or ""
        address, legacy_ip = ip_or_note(raw_ip)
        if address is None:
            if legacy_ip is None:
                stats.ip_empty += 1
            else:
                stats.ip_not_address += 1
        ok = bool(success)
        append(
            (
                legacy_event_id(created, source_id),
                created,
                phone,
                ok,
                "ok" if ok else "legacy",
                address,
                user_agent[:255] if user_agent else None,
                "flask",
                legacy_ip,
            )
        )
    stats.read += len(rows)
    stats.last_time = last_time
    return records
