"""Request and response shapes of the auth API (the Flask-era clients' field names).

Request structs accept loose types so that every field's problem can be reported at once, in words
for people; the ``clean_*`` functions turn them into checked values or raise ``ValidationFailed``.
"""

from __future__ import annotations

import datetime
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import msgspec
from email_validator import EmailNotValidError, validate_email
from msgspec import UNSET, UnsetType

from app.accounts.passwords import password_problem, pin_problem
from app.core.errors import FieldErrors
from app.core.phones import PhoneNumberError, normalise_phone
from app.db.models import User

SELF_REGISTERED_USER_TYPES = ("parent", "adolescent")
NAME_MAX_LENGTH = 200
CYCLE_LENGTH_RANGE = (15, 60)
PERIOD_LENGTH_RANGE = (1, 15)
SESSION_TIMEOUT_RANGE = (1, 60)


# ---- requests ---------------------------------------------------------------------------------


class RegisterRequest(msgspec.Struct, kw_only=True):
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    password: str | None = None
    user_type: str | None = None
    pin: str | int | None = None
    email: str | None = None
    date_of_birth: str | None = None


class LoginRequest(msgspec.Struct, kw_only=True):
    phone_number: str | None = None
    password: str | None = None
    pin: str | int | None = None


class RefreshRequest(msgspec.Struct, kw_only=True):
    refresh_token: str | None = None


class ProfileUpdateRequest(msgspec.Struct, kw_only=True):
    """``PUT /api/auth/profile`` and ``PUT /api/settings/account``; absent fields stay as they are."""

    name: str | UnsetType = UNSET
    first_name: str | UnsetType = UNSET
    last_name: str | UnsetType | None = UNSET
    email: str | UnsetType | None = UNSET
    phone_number: str | UnsetType = UNSET
    phone: str | UnsetType = UNSET
    date_of_birth: str | UnsetType | None = UNSET
    personal_cycle_length: int | UnsetType | None = UNSET
    personal_period_length: int | UnsetType | None = UNSET
    has_provided_cycle_info: bool | UnsetType = UNSET
    session_timeout_minutes: int | UnsetType = UNSET
    enable_pin_auth: bool | UnsetType = UNSET
    allow_parent_access: bool | UnsetType = UNSET
    data_sharing_consent: bool | UnsetType = UNSET
    notification_preferences: dict[str, Any] | UnsetType | None = UNSET
    current_password: str | UnsetType | None = UNSET
    new_password: str | UnsetType | None = UNSET
    password: str | UnsetType | None = UNSET
    new_pin: str | int | UnsetType | None = UNSET
    pin: str | int | UnsetType | None = UNSET


# ---- responses --------------------------------------------------------------------------------


class UserView(msgspec.Struct, kw_only=True):
    """The user object the clients keep; ``phone`` is the Flask-era alias of ``phone_number``."""

    id: int
    name: str
    first_name: str
    last_name: str
    phone_number: str | None  # None: an imported account without a phone (a family-managed child)
    phone: str | None
    email: str | None
    user_type: str
    role: str
    is_active: bool
    enable_pin_auth: bool
    pin_enabled: bool
    date_of_birth: datetime.date | None
    personal_cycle_length: int | None
    personal_period_length: int | None
    has_provided_cycle_info: bool
    session_timeout_minutes: int
    last_activity: datetime.datetime | None
    is_phone_verified: bool
    allow_parent_access: bool
    data_sharing_consent: bool
    notification_preferences: dict[str, Any] | None
    account_type: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime

    @classmethod
    def of(cls, user: User) -> UserView:
        first, last = split_name(user.name)
        pin_on = bool(user.enable_pin_auth and user.pin_hash)
        return cls(
            id=user.id,
            name=user.name,
            first_name=first,
            last_name=last,
            phone_number=user.phone_number,
            phone=user.phone_number,
            email=user.email,
            user_type=user.user_type,
            role=user.role,
            is_active=user.is_active,
            enable_pin_auth=pin_on,
            pin_enabled=pin_on,
            date_of_birth=user.date_of_birth,
            personal_cycle_length=user.personal_cycle_length,
            personal_period_length=user.personal_period_length,
            has_provided_cycle_info=user.has_provided_cycle_info,
            session_timeout_minutes=user.session_timeout_minutes,
            last_activity=user.last_activity,
            is_phone_verified=user.is_phone_verified,
            allow_parent_access=user.allow_parent_access,
            data_sharing_consent=user.data_sharing_consent,
            notification_preferences=user.notification_preferences,
            account_type=user.account_type,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class AuthResponse(msgspec.Struct, kw_only=True):
    message: str
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    user_id: int
    user_type: str
    user: UserView
    pin_enabled: bool | UnsetType = UNSET
    auth_method: str | UnsetType = UNSET


class RefreshResponse(msgspec.Struct, kw_only=True):
    message: str
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str | UnsetType = UNSET


class ProfileResponse(UserView, kw_only=True):
    """The profile is the user object itself (older clients), plus ``message`` and ``user`` (settings page).

    After a password or PIN change every older session is revoked and fresh tokens come back here.
    """

    message: str
    user: UserView
    access_token: str | UnsetType = UNSET
    refresh_token: str | UnsetType = UNSET

    @classmethod
    def of_user(cls, user: User, message: str, **tokens: str) -> ProfileResponse:
        view = UserView.of(user)
        fields: dict[str, Any] = {name: getattr(view, name) for name in view.__struct_fields__}
        fields.update(tokens)
        return cls(**fields, message=message, user=view)


class MessageResponse(msgspec.Struct, kw_only=True):
    message: str


# ---- cleaning ---------------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str]:
    first, _, last = name.strip().partition(" ")
    return first, last.strip()


def _clean_name(errors: FieldErrors, field_name: str, value: str | None, *, required: bool) -> str | None:
    text = " ".join((value or "").split())
    if not text:
        if required:
            errors.add(field_name, "Enter your name.")
        return None
    if len(text) > NAME_MAX_LENGTH or any(unicodedata.category(ch) == "Cc" for ch in text):
        errors.add(field_name, f"Name must be at most {NAME_MAX_LENGTH} printable characters.")
        return None
    return text


def _clean_phone(errors: FieldErrors, field_name: str, value: str | None, region: str, *, strict: bool) -> str | None:
    if not value or not value.strip():
        errors.add(field_name, "Enter your phone number.")
        return None
    try:
        return normalise_phone(value, region, strict=strict)
    except PhoneNumberError as exc:
        errors.add(field_name, str(exc))
        return None


def _clean_email(errors: FieldErrors, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        errors.add("email", "Enter a valid email address, or leave it empty.")
        return None


def _clean_date_of_birth(errors: FieldErrors, value: str | None) -> datetime.date | None:
    if value is None or not value.strip():
        return None
    try:
        born = datetime.date.fromisoformat(value.strip()[:10])
    except ValueError:
        errors.add("date_of_birth", "Enter the date of birth as YYYY-MM-DD.")
        return None
    if born > datetime.datetime.now(datetime.UTC).date():
        errors.add("date_of_birth", "Date of birth cannot be in the future.")
        return None
    if born.year < 1900:
        errors.add("date_of_birth", "Enter a real date of birth.")
        return None
    return born


def _clean_pin(errors: FieldErrors, field_name: str, value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    pin = str(value).strip()
    problem = pin_problem(pin)
    if problem:
        errors.add(field_name, problem)
        return None
    return pin


def _in_range(errors: FieldErrors, field_name: str, value: int | None, bounds: tuple[int, int], unit: str) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        errors.add(field_name, f"Must be between {bounds[0]} and {bounds[1]} {unit}.")


@dataclass(frozen=True, slots=True)
class NewAccount:
    name: str
    phone_number: str
    password: str
    user_type: str
    email: str | None
    pin: str | None
    date_of_birth: datetime.date | None


def clean_registration(data: RegisterRequest, region: str) -> NewAccount:
    errors = FieldErrors()
    joined = " ".join(part for part in (data.first_name, data.last_name) if part)
    name = _clean_name(errors, "name", data.name or joined, required=True)
    phone = _clean_phone(errors, "phone_number", data.phone_number, region, strict=True)
    user_type = (data.user_type or "adolescent").strip().lower()
    if user_type not in SELF_REGISTERED_USER_TYPES:
        errors.add("user_type", "Choose parent or adolescent.")
    password = data.password or ""
    if not password:
        errors.add("password", "Enter a password.")
    else:
        problem = password_problem(password, phone_digits=(phone or "").lstrip("+"), name=name or "")
        if problem:
            errors.add("password", problem)
    email = _clean_email(errors, data.email)
    pin = _clean_pin(errors, "pin", data.pin)
    born = _clean_date_of_birth(errors, data.date_of_birth)
    errors.raise_if_any()
    assert name and phone
    return NewAccount(name, phone, password, user_type, email, pin, born)


@dataclass(frozen=True, slots=True)
class Credentials:
    phone_number: str
    secret: str
    method: str  # "password" | "pin"


def clean_login(data: LoginRequest, region: str) -> Credentials:
    errors = FieldErrors()
    phone = _clean_phone(errors, "phone_number", data.phone_number, region, strict=False)
    has_password = bool(data.password)
    has_pin = data.pin is not None and data.pin != ""
    if has_password == has_pin:
        errors.add("password", "Enter either your password or your PIN.")
    errors.raise_if_any()
    assert phone
    if has_pin:
        return Credentials(phone, str(data.pin).strip(), "pin")
    return Credentials(phone, str(data.password), "password")


@dataclass(slots=True)
class ProfileChanges:
    fields: dict[str, Any] = field(default_factory=dict)
    current_password: str | None = None
    new_password: str | None = None
    new_pin: str | None = None

    @property
    def changes_credentials(self) -> bool:
        return self.new_password is not None or self.new_pin is not None


def _given(value: Any) -> bool:
    return value is not UNSET


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def clean_profile_update(data: ProfileUpdateRequest, user: User, region: str) -> ProfileChanges:
    errors = FieldErrors()
    changes = ProfileChanges()
    out = changes.fields

    first, last = split_name(user.name)
    if _given(data.name):
        out["name"] = _clean_name(errors, "name", data.name or None, required=True)
    elif _given(data.first_name) or _given(data.last_name):
        new_first = data.first_name if _given(data.first_name) else first
        new_last = (data.last_name or "") if _given(data.last_name) else last
        field_name = "first_name" if _given(data.first_name) else "last_name"
        out["name"] = _clean_name(errors, field_name, f"{new_first} {new_last}", required=True)

    phone_value = data.phone_number if _given(data.phone_number) else data.phone
    if _given(phone_value):
        field_name = "phone_number" if _given(data.phone_number) else "phone"
        phone = _clean_phone(errors, field_name, str(phone_value), region, strict=True)
        if phone and phone != user.phone_number:
            out["phone_number"] = phone
    if _given(data.email):
        email_value = data.email if isinstance(data.email, str) else None
        out["email"] = _clean_email(errors, email_value)
    if _given(data.date_of_birth):
        out["date_of_birth"] = _clean_date_of_birth(errors, data.date_of_birth or None)

    for name, bounds, unit in (
        ("personal_cycle_length", CYCLE_LENGTH_RANGE, "days"),
        ("personal_period_length", PERIOD_LENGTH_RANGE, "days"),
        ("session_timeout_minutes", SESSION_TIMEOUT_RANGE, "minutes"),
    ):
        value = getattr(data, name)
        if _given(value):
            if value is None and name == "session_timeout_minutes":
                errors.add(name, "Enter a number of minutes.")
                continue
            _in_range(errors, name, value, bounds, unit)
            out[name] = value
    if (_given(data.personal_cycle_length) or _given(data.personal_period_length)) and not _given(
        data.has_provided_cycle_info
    ):
        out["has_provided_cycle_info"] = True
    for name in ("has_provided_cycle_info", "enable_pin_auth", "allow_parent_access", "data_sharing_consent"):
        value = getattr(data, name)
        if _given(value):
            out[name] = value
    if _given(data.notification_preferences):
        if _contains_nul(data.notification_preferences):
            # Postgres text and jsonb cannot hold U+0000.
            errors.add("notification_preferences", "Preferences must not contain the NUL character.")
        else:
            out["notification_preferences"] = data.notification_preferences

    new_password = data.new_password if _given(data.new_password) else data.password
    if isinstance(new_password, str) and new_password:
        field_name = "new_password" if _given(data.new_password) else "password"
        phone_digits = str(out.get("phone_number", user.phone_number) or "").lstrip("+")
        problem = password_problem(new_password, phone_digits=phone_digits, name=out.get("name") or user.name)
        if problem:
            errors.add(field_name, problem)
        changes.new_password = new_password
    new_pin = data.new_pin if _given(data.new_pin) else data.pin
    if isinstance(new_pin, str | int) and new_pin != "":
        changes.new_pin = _clean_pin(errors, "new_pin" if _given(data.new_pin) else "pin", new_pin)
    if changes.changes_credentials:
        current = data.current_password if isinstance(data.current_password, str) else None
        if not current:
            errors.add("current_password", "Enter your current password to change your password or PIN.")
        changes.current_password = current
    errors.raise_if_any()
    return changes
