"""The login-attempt event: minted by the request, carried by a Redis stream, stored in Postgres.

One event per call of the login endpoint, whatever the outcome. ``event_id`` (UUIDv7) is unique,
so every write of an event is idempotent (``ON CONFLICT (event_id) DO NOTHING``).
"""

from __future__ import annotations

import datetime
import uuid

import msgspec
from uuid_utils.compat import uuid7

REASONS = (
    "ok",
    "invalid_credentials",
    "unknown_account",
    "pin_not_enabled",
    "pin_locked",
    "account_locked",
    "account_inactive",
    "rate_limited",
    "limiter_unavailable",
    "invalid_request",
)
# The stream entry holds the whole event as JSON under this one field.
STREAM_FIELD = "e"
PHONE_MAX = 20
USER_AGENT_MAX = 255


class LoginEvent(msgspec.Struct, frozen=True, kw_only=True):
    event_id: uuid.UUID
    created_at: datetime.datetime
    phone_number: str
    success: bool
    reason: str
    auth_method: str | None = None
    user_id: int | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


class EventDecodeError(ValueError):
    """A stream entry that is not a login event; it goes to the dead-letter stream."""


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
) -> LoginEvent:
    """``phone_number`` is E.164 when it parsed, else the raw input cut to 20 characters."""
    assert reason in REASONS, reason
    return LoginEvent(
        event_id=uuid7(),
        created_at=datetime.datetime.now(datetime.UTC),
        phone_number=phone_number[:PHONE_MAX],
        success=success,
        reason=reason,
        auth_method=auth_method if auth_method in ("password", "pin") else None,
        user_id=user_id,
        ip_address=ip_address,
        user_agent=user_agent[:USER_AGENT_MAX] if user_agent else None,
        request_id=request_id[:64] if request_id else None,
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LoginEvent)


def encode_event(event: LoginEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes | str) -> LoginEvent:
    try:
        event = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EventDecodeError(str(exc)) from exc
    if event.reason not in REASONS:
        raise EventDecodeError(f"unknown reason {event.reason!r}")
    return event
