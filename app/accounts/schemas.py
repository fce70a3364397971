"""Request and response shapes of the accounts API: the Flask-era clients' field names, on the wire.

Request structs accept loose types so that every field's problem can be reported at once, in words
for people; :mod:`app.accounts.forms` turns them into checked values or raises ``ValidationFailed``.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from app.accounts import contract
from app.core.openapi import LooseBody
from app.db.models import User
from app.sessions.schemas import MessageResponse as MessageResponse  # these routes give the same plain answer
from app.sessions.service import SignIn

# ---- requests ---------------------------------------------------------------------------------


class RegisterRequest(LooseBody, kw_only=True):
    # Loose types with the real constraints documented (app/accounts/contract.py), not enforced here.
    required_fields = frozenset({"name", "phone_number", "password"})
    name: contract.Name = None
    first_name: contract.NamePart = None
    last_name: contract.NamePart = None
    phone_number: contract.Phone = None
    password: contract.NewPassword = None
    user_type: contract.UserType = None
    pin: contract.NewPin = None
    email: contract.Email = None
    date_of_birth: contract.DateOfBirth = None


class LoginRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"phone_number"})  # and exactly one of password and pin
    phone_number: contract.Phone = None
    password: contract.Password = None
    pin: contract.Pin = None


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

    @classmethod
    def of(cls, sign_in: SignIn, message: str, **extra: Any) -> AuthResponse:
        """The Flask-era sign-in answer: both tokens, the user, and ``extra`` (``pin_enabled``, ``auth_method``)."""
        access = sign_in.access.claims
        return cls(
            message=message,
            access_token=sign_in.access.token,
            refresh_token=sign_in.refresh_token,
            expires_in=int((access.expires_at - access.issued_at).total_seconds()),
            user_id=sign_in.user.id,
            user_type=sign_in.user.user_type,
            user=UserView.of(sign_in.user),
            **extra,
        )


class ProfileResponse(UserView, kw_only=True):
    """The profile is the user object itself (older clients), plus ``message`` and ``user`` (settings page).

    After a password, PIN or phone change the other sessions are ended; the one that made the change
    keeps its tokens (the settings page ignores tokens here, so none are sent).
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


def split_name(name: str) -> tuple[str, str]:
    first, _, last = name.strip().partition(" ")
    return first, last.strip()
