"""What the USSD gateway sends and gets back: checked values in, short answers out.

Bodies are read as plain JSON objects and checked field by field here (not by Litestar before the
handler), so a malformed call still reaches the handler and leaves its one audit row. Every
answer's ``message`` is a short plain sentence: a USSD screen holds about 160 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIType, Schema

from app.accounts.forms import SELF_REGISTERED_USER_TYPES
from app.accounts.names import NAME_MAX_LENGTH, name_problem, normalise_name
from app.core.errors import AppError, FieldErrors
from app.core.openapi import json_object
from app.core.phones import PhoneNumberError, normalise_phone
from app.credentials.passwords import pin_problem

USSD_MESSAGE_MAX = 160
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


class MalformedBody(AppError):
    code = "malformed_json"
    message = "The request body is not a JSON object."


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; :class:`MalformedBody` for anything else."""
    try:
        value = msgspec.json.decode(body) if body.strip() else None
    except (msgspec.DecodeError, RecursionError):
        raise MalformedBody("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise MalformedBody()
    return value


def _text(body: dict[str, Any], name: str) -> str | None:
    """A field as text (numbers are accepted: gateways send PINs both ways); None when absent."""
    value = body.get(name)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def _phone(errors: FieldErrors, body: dict[str, Any], region: str, *, strict: bool) -> str:
    raw = _text(body, "phone_number")
    if raw is None:
        errors.add("phone_number", "Enter the caller's phone number.")
        return ""
    try:
        return normalise_phone(raw, region, strict=strict)
    except PhoneNumberError as exc:
        errors.add("phone_number", str(exc))
        return ""


def _session_id(errors: FieldErrors, body: dict[str, Any]) -> str:
    raw = _text(body, "session_id")
    if raw is None or not SESSION_ID_PATTERN.match(raw):
        errors.add("session_id", "Send the USSD session id (1-64 letters, digits, or . _ : -).")
        return ""
    return raw


def _pin_given(errors: FieldErrors, body: dict[str, Any], name: str) -> str:
    raw = _text(body, name)
    if raw is None:
        errors.add(name, "Enter your 4-digit PIN.")
        return ""
    return raw


def _new_pin(errors: FieldErrors, body: dict[str, Any], name: str) -> str:
    raw = _text(body, name)
    problem = "Enter a 4-digit PIN." if raw is None else pin_problem(raw)
    if problem:
        errors.add(name, problem)
        return ""
    assert raw is not None
    return raw


@dataclass(frozen=True, slots=True)
class PinCheck:
    phone_number: str
    pin: str
    session_id: str


@dataclass(frozen=True, slots=True)
class UssdAccount:
    phone_number: str
    name: str
    user_type: str
    pin: str
    session_id: str


@dataclass(frozen=True, slots=True)
class PinChange:
    phone_number: str
    current_pin: str
    new_pin: str
    session_id: str


def clean_pin_check(body: dict[str, Any], region: str) -> PinCheck:
    errors = FieldErrors()
    check = PinCheck(
        _phone(errors, body, region, strict=False), _pin_given(errors, body, "pin"), _session_id(errors, body)
    )
    errors.raise_if_any()
    return check


def clean_account(body: dict[str, Any], region: str) -> UssdAccount:
    errors = FieldErrors()
    phone = _phone(errors, body, region, strict=True)
    name = normalise_name(_text(body, "name"))
    if not name:
        errors.add("name", "Enter your name.")
    elif name_problem(name):  # registration's rules: no control, direction-changing or hidden characters
        errors.add("name", f"Name must be at most {NAME_MAX_LENGTH} printable characters.")
    user_type = (_text(body, "user_type") or "").lower()
    if user_type not in SELF_REGISTERED_USER_TYPES:
        errors.add("user_type", "Choose parent or adolescent.")
    pin = _new_pin(errors, body, "pin")
    session_id = _session_id(errors, body)
    errors.raise_if_any()
    return UssdAccount(phone, name, user_type, pin, session_id)


def clean_pin_change(body: dict[str, Any], region: str) -> PinChange:
    errors = FieldErrors()
    phone = _phone(errors, body, region, strict=False)
    current = _pin_given(errors, body, "current_pin")
    new = _new_pin(errors, body, "new_pin")
    session_id = _session_id(errors, body)
    if current and new and current == new:
        errors.add("new_pin", "Choose a new PIN that differs from the current one.")
    errors.raise_if_any()
    return PinChange(phone, current, new, session_id)


def peek_identity(body: dict[str, Any] | None, region: str) -> tuple[str, str | None]:
    """(phone number, session id) for the audit row of a call whatever its shape."""
    if body is None:
        return "", None
    raw = _text(body, "phone_number") or ""
    try:
        phone = normalise_phone(raw, region, strict=False)
    except PhoneNumberError:
        phone = raw[:20]
    return phone, (_text(body, "session_id") or "")[:64] or None


# ---- answers --------------------------------------------------------------------------------------


class VerifiedPin(msgspec.Struct, kw_only=True):
    message: str
    user_id: int
    first_name: str
    user_type: str
    enable_pin_auth: bool


class Registered(msgspec.Struct, kw_only=True):
    message: str
    user_id: int
    first_name: str
    user_type: str
    enable_pin_auth: bool
    is_phone_verified: bool


class PinChanged(msgspec.Struct, kw_only=True):
    message: str
    user_id: int


# ---- the bodies, for the OpenAPI document (the handlers read them with the functions above) ------

_PHONE = Schema(type=OpenAPIType.STRING, description="The caller's number, as the mobile network gives it.")
_SESSION = Schema(
    type=OpenAPIType.STRING,
    pattern="^" + SESSION_ID_PATTERN.pattern.removesuffix(r"\Z") + "$",
    description="The USSD session id.",
)


def _pin(description: str) -> Schema:
    return Schema(
        one_of=[Schema(type=OpenAPIType.STRING, pattern="^[0-9]{4}$"), Schema(type=OpenAPIType.INTEGER)],
        description=description,
    )


PIN_CHECK_BODY = json_object(
    ["phone_number", "pin", "session_id"],
    phone_number=_PHONE,
    pin=_pin("The PIN the caller typed."),
    session_id=_SESSION,
)
ACCOUNT_BODY = json_object(
    ["phone_number", "name", "user_type", "pin", "session_id"],
    phone_number=_PHONE,
    name=Schema(type=OpenAPIType.STRING, max_length=NAME_MAX_LENGTH),
    user_type=Schema(type=OpenAPIType.STRING, enum=sorted(SELF_REGISTERED_USER_TYPES)),
    pin=_pin("The new account's PIN (the registration's PIN rules)."),
    session_id=_SESSION,
)
PIN_CHANGE_BODY = json_object(
    ["phone_number", "current_pin", "new_pin", "session_id"],
    phone_number=_PHONE,
    current_pin=_pin("The PIN the caller has now."),
    new_pin=_pin("The new PIN (the registration's PIN rules; not the current one)."),
    session_id=_SESSION,
)
CALLER_BODY = json_object(["phone_number", "session_id"], phone_number=_PHONE, session_id=_SESSION)
PIN_RESET_BODY = json_object(
    ["phone_number", "session_id", "new_pin", "answer"],
    phone_number=_PHONE,
    session_id=_SESSION,
    new_pin=_pin("The new PIN (the registration's PIN rules)."),
    answer=Schema(type=OpenAPIType.STRING, description="The knowledge check: year of birth, else first name."),
)
