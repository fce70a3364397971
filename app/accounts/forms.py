"""Validation of the accounts API's requests: loose wire structs in, checked values out.

Each ``clean_*`` function reports every problem of a request at once (``ValidationFailed`` with
one message per field, in words for people) or returns a frozen value the services can trust.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from msgspec import UNSET

from app.accounts.names import name_problem, normalise_name
from app.accounts.privacy import clean_notification_preferences
from app.accounts.schemas import LoginRequest, ProfileUpdateRequest, RegisterRequest, split_name
from app.core.errors import FieldErrors
from app.core.phones import PhoneNumberError, normalise_phone
from app.credentials.passwords import password_problem, pin_problem
from app.db.models import User

SELF_REGISTERED_USER_TYPES = ("parent", "adolescent")
CYCLE_LENGTH_RANGE = (15, 60)
PERIOD_LENGTH_RANGE = (1, 15)
SESSION_TIMEOUT_RANGE = (1, 60)


# ---- cleaning ---------------------------------------------------------------------------------


def _clean_name(errors: FieldErrors, field_name: str, value: str | None, *, required: bool) -> str | None:
    text = normalise_name(value)
    if not text:
        if required:
            errors.add(field_name, "Enter your name.")
        return None
    problem = name_problem(text)
    if problem:
        errors.add(field_name, problem)
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
        """A change that ends the account's other sessions."""
        return self.new_password is not None or self.new_pin is not None or "phone_number" in self.fields


def _given(value: Any) -> bool:
    return value is not UNSET


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
    preferences = data.notification_preferences
    if preferences is None:  # back to the defaults
        out["notification_preferences"] = None
    elif isinstance(preferences, dict):  # checked as the privacy page's are
        out["notification_preferences"] = clean_notification_preferences(errors, preferences, user)

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
        # A new PIN turns PIN sign-in on, whatever the checkbox sent with it says: the settings page
        # sends its (usually unticked) box along, and the Flask route applied it first, then the PIN.
        out["enable_pin_auth"] = True
    # Optional: a recent sign-in also allows sensitive changes (app/accounts/reauth.py decides).
    current = data.current_password if isinstance(data.current_password, str) else None
    changes.current_password = current or None
    errors.raise_if_any()
    return changes
