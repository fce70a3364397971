"""The login-attempt event: minted by the request, carried by a Redis stream, stored in Postgres.

One event per call of the login endpoint, whatever the outcome. ``event_id`` (UUIDv7) is unique,
so every write of an event is idempotent (``ON CONFLICT (event_id, created_at) DO NOTHING``: the table
is partitioned on ``created_at``, which is fixed here too, when the event is minted).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import socket
import typing
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import uuid_utils

from app.core.redis_keys import STREAM_FIELD as STREAM_FIELD  # the stream entry holds the event as JSON

REASONS = (
    "ok",
    "invalid_credentials",
    "unknown_account",
    "pin_not_enabled",
    "pin_locked",
    "account_locked",
    "account_inactive",
    "rate_limited",
    "busy",  # not verified: the hash queue could not verify it within its reservation
    "session_not_stored",  # verified, but its session could not be stored (a database fault): no sign-in
    "credentials_changed",  # verified against a password or PIN changed (or an account ended) meanwhile
    "limiter_unavailable",
    "invalid_request",
    "reauth_failed",  # a wrong current_password on a profile change (app/accounts/reauth.py)
    "identifier_changed",  # an email or phone number change (app/accounts/identifiers.py)
    "identifier_taken",  # ... refused: another account has it
    "legacy",  # a failed Flask-era attempt brought in by `legacy import` (the Flask era kept no reason)
    # The USSD channel (app/ussd): a session out of tries, the gateway's failure budget spent, and
    # the outcomes of a registration and a PIN change.
    "session_locked",
    "registered",
    "phone_number_taken",
    "pin_changed",
    "bad_credential",  # a USSD call refused for its service credential: missing, unknown, revoked, wrong scope
    # Self-service recovery (app/recovery): a code sent (or not, and why), a code checked, a PIN reset.
    "code_sent",
    "code_not_sent",  # no account for the number: nothing sent, the answer is the same
    "country_refused",  # a number outside SMS_ALLOWED_COUNTRIES
    "sms_budget_spent",  # the global daily SMS budget: no SMS until it frees
    "provider_failed",  # the SMS provider was down or refused: the code was withdrawn
    "code_invalid",  # a wrong, expired, used or withdrawn code
    "code_dead",  # the fifth wrong try: the code is withdrawn
    "recovered",
    "recovered_unverified",  # the number's owner took back an account whose number was never verified
    "phone_verified",  # a signed-in account proved its number with a code
    "knowledge_failed",  # a wrong year of birth / first name on a USSD PIN reset
)
CHANNELS = ("http", "ussd", "sms")

# A UUID in its canonical text form. Kept as text from minting to the COPY (asyncpg encodes it):
# building ``uuid.UUID`` objects was most of the writer's decoding (docs/audit.md has the figure).
# \Z, not $: a "$" would let "<uuid>\n" through, which asyncpg then refuses with a bare ValueError.
EventId = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")]


# Column widths of login_attempts; an event wider than these would fail a whole batch insert.
PHONE_MAX = 20
USER_AGENT_MAX = 255
REQUEST_ID_MAX = 64
SESSION_ID_MAX = 64
SERVICE_NAME_MAX = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# gc=False: only scalars inside, so the cyclic GC need not track the writer's tens of thousands.
# omit_defaults: absent (None) fields are left out of the stream entry, which a refusal pays for
# inside its Redis call; decoding fills them back in, and entries written with explicit nulls read the same.
# The constraints are what ``login_attempts`` can store: a decoded event that meets them is written
# as it is (checked in C by msgspec); one that does not is repaired or refused by :func:`storable`.
# They are checked on decoding only: events built in code are made to fit by :func:`new_event`.
class LoginEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    event_id: EventId
    created_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    phone_number: Annotated[str, msgspec.Meta(max_length=PHONE_MAX)]
    success: bool
    reason: str
    auth_method: str | None = None
    user_id: Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | None = None
    ip_address: str | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=USER_AGENT_MAX)] | None = None
    request_id: Annotated[str, msgspec.Meta(max_length=REQUEST_ID_MAX)] | None = None
    # Left out of the stream entry when "http" (omit_defaults): the login path's events stay as small.
    channel: str = "http"
    session_id: Annotated[str, msgspec.Meta(max_length=SESSION_ID_MAX)] | None = None
    service_name: Annotated[str, msgspec.Meta(max_length=SERVICE_NAME_MAX)] | None = None


# The same fields without the storage constraints (the event id's form excepted): what any login
# event may hold before :func:`storable` settles it. Derived from the fields' names, types and
# defaults (LoginEvent renames nothing; a unit test holds the two to the same wire form).
_hints = typing.get_type_hints(LoginEvent)  # without the Annotated constraints
_UncheckedEvent = msgspec.defstruct(
    "UncheckedLoginEvent",
    [
        (field.name, EventId if field.name == "event_id" else _hints[field.name])
        if field.required
        else (field.name, _hints[field.name], field.default)
        for field in msgspec.structs.fields(LoginEvent)
    ],
    kw_only=True,
    gc=False,
)


class EventDecodeError(ValueError):
    """A stream entry that is not a login event; it goes to the dead-letter stream."""


def new_event_identity() -> tuple[str, datetime.datetime]:
    """A new event's id and time: what makes two events the same row (``store.py``'s conflict key)."""
    return str(uuid_utils.uuid7()), datetime.datetime.now(datetime.UTC)


def new_event(
    *,
    phone_number: str,
    success: bool,
    reason: str,
    auth_method: str | None = None,
    user_id: int | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    channel: str = "http",
    session_id: str | None = None,
    service_name: str | None = None,
    identity: tuple[str, datetime.datetime] | None = None,
) -> LoginEvent:
    """``phone_number`` is E.164 when it parsed, else the raw input cut to 20 characters.

    ``identity``: the event id and time of an attempt that may record more than one event, of which
    exactly one row must be kept (``LoginAttempt``); a new one when not given.
    """
    assert reason in REASONS, reason
    assert channel in CHANNELS, channel
    event_id, created_at = identity if identity is not None else new_event_identity()
    return LoginEvent(
        event_id=event_id,
        created_at=created_at,
        phone_number=phone_number[:PHONE_MAX],
        success=success,
        reason=reason,
        auth_method=auth_method if auth_method in ("password", "pin") else None,
        user_id=user_id,
        ip_address=ip_address,
        user_agent=user_agent[:USER_AGENT_MAX] if user_agent else None,
        request_id=request_id[:REQUEST_ID_MAX] if request_id else None,
        channel=channel,
        session_id=session_id[:SESSION_ID_MAX] if session_id else None,
        service_name=service_name[:SERVICE_NAME_MAX] if service_name else None,
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LoginEvent)
_unchecked_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_UncheckedEvent)
REASON_SET = frozenset(REASONS)
AUTH_METHODS = frozenset(("password", "pin"))
CHANNEL_SET = frozenset(CHANNELS)


def encode_event(event: LoginEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes | str) -> LoginEvent:
    """The event in ``payload`` as it was sent (not yet made storable), or :class:`EventDecodeError`."""
    try:
        unchecked = _unchecked_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EventDecodeError(str(exc)) from exc
    if unchecked.reason not in REASON_SET:
        raise EventDecodeError(f"unknown reason {unchecked.reason!r}")
    return LoginEvent(**msgspec.structs.asdict(unchecked))


def decode_storable(payload: bytes | str) -> LoginEvent:
    """The storable event in ``payload``: ``storable(decode_event(payload))``, faster.

    The writer's hot path. An event that already fits the columns (almost all of them) is decoded
    and checked in one msgspec call; the rest take the general path. Postgres text cannot hold NUL,
    which JSON carries escaped, so a payload holding that escape goes the general way too.
    """
    if isinstance(payload, str):
        try:
            payload = payload.encode()
        except UnicodeError as exc:  # a lone surrogate: not JSON any client could have sent
            raise EventDecodeError(str(exc)) from exc
    # Any escape at all is rare (a quote in a user agent): one memchr for the common case.
    if b"\\" not in payload or _NUL_ESCAPE not in payload:
        try:
            event = _decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            if (
                event.reason in REASON_SET
                and (event.auth_method is None or event.auth_method in AUTH_METHODS)
                and event.channel in CHANNEL_SET
                and (event.ip_address is None or packed_ip(event.ip_address) is not None)
            ):
                return event
    return storable(decode_event(payload))


# ---- stream entries and storage -------------------------------------------------------------------

_STREAM_FIELD_BYTES = STREAM_FIELD.encode()
_NUL_ESCAPE = b"\\u0000"
_TEXT_LIMITS = (
    ("phone_number", PHONE_MAX),
    ("user_agent", USER_AGENT_MAX),
    ("request_id", REQUEST_ID_MAX),
    ("session_id", SESSION_ID_MAX),
    ("service_name", SERVICE_NAME_MAX),
)


def stream_fields(event: LoginEvent) -> dict[str, bytes]:
    """The fields of the stream entry for ``event``: the format the limiter's Lua scripts also write."""
    return {STREAM_FIELD: encode_event(event)}


def decode_entry(fields: Mapping[Any, Any] | None) -> LoginEvent:
    """The storable event in a stream entry's fields (bytes or str keys), or :class:`EventDecodeError`."""
    if not fields:
        raise EventDecodeError("entry has no fields")
    payload = fields.get(_STREAM_FIELD_BYTES, fields.get(STREAM_FIELD))
    if not isinstance(payload, bytes | str):
        raise EventDecodeError(f"entry has no {STREAM_FIELD!r} field")
    return decode_storable(payload)


def storable(event: LoginEvent) -> LoginEvent:
    """``event`` as the ``login_attempts`` columns accept it.

    One bad row must not block a batch forever, so everything Postgres would refuse is settled here:
    over-long text is cut as :func:`new_event` cuts it, NUL characters (which Postgres text cannot
    hold, and a client can send in a phone field) become U+FFFD, a naive timestamp is read as UTC.
    What cannot be made faithful (an unparsable IP, an out-of-range user id, an unknown auth
    method or channel) raises :class:`EventDecodeError` so the entry is dead-lettered, not guessed at.
    """
    if event.reason not in REASON_SET:
        raise EventDecodeError(f"unknown reason {event.reason!r}")
    if event.auth_method is not None and event.auth_method not in AUTH_METHODS:
        raise EventDecodeError(f"unknown auth_method {event.auth_method!r}")
    if event.channel not in CHANNEL_SET:
        raise EventDecodeError(f"unknown channel {event.channel!r}")
    if event.user_id is not None and not INT64_MIN <= event.user_id <= INT64_MAX:
        raise EventDecodeError("user_id out of range")
    changes: dict[str, object] = {}
    if event.ip_address is not None and packed_ip(event.ip_address) is None:
        raise EventDecodeError(f"invalid ip_address {event.ip_address!r}")
    if event.created_at.tzinfo is None:
        changes["created_at"] = event.created_at.replace(tzinfo=datetime.UTC)
    for name, limit in _TEXT_LIMITS:
        value = getattr(event, name)
        if value is not None and (len(value) > limit or "\x00" in value):
            changes[name] = value.replace("\x00", "\ufffd")[:limit]
    return msgspec.structs.replace(event, **changes) if changes else event


@functools.lru_cache(maxsize=8192)
def packed_ip(value: str) -> bytes | None:
    """The address's packed bytes, or None if ``value`` is not an IP address.

    The writer needs both answers per event (is it storable, and what asyncpg should encode): one
    cached parse serves both, and inet_pton (C) takes the common forms before ipaddress (Python)
    sees the rare ones, such as an IPv6 scope. The cache is bounded (an attack from millions of
    addresses must not grow the worker); a miss costs one inet_pton.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, value)
        except (OSError, ValueError):
            continue
    try:
        return ipaddress.ip_address(value).packed
    except ValueError:
        return None
