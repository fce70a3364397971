"""The settings page's privacy data: parent access, data sharing, notification preferences.

Stored on the user row (Flask-era columns). Notification preferences are read merged over the
client's defaults (``clients/web-client.md``), so a row that holds none, or only some, still gives
the page every switch; an unknown key or a value that is not true/false is a field error.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from app.core.errors import FieldErrors, PermissionDenied
from app.db.models import User

NOTIFICATION_DEFAULTS: dict[str, bool] = {
    "cycle_reminders": True,
    "appointment_reminders": True,
    "health_tips": True,
    "new_features": False,
    "email": True,
    "sms": False,
}
PARENT_ACCESS_USER_TYPES = frozenset({"adolescent"})


class PrivacyUpdateRequest(msgspec.Struct, kw_only=True):
    """``PUT /api/settings/privacy``; absent fields stay as they are."""

    notification_preferences: dict[str, Any] | UnsetType = UNSET
    data_sharing_consent: bool | UnsetType = UNSET


class ParentAccessRequest(msgspec.Struct, kw_only=True):
    allow_parent_access: bool


class PrivacyView(msgspec.Struct, kw_only=True):
    """``linked_parents`` is left out: the family links are the platform's, not this service's."""

    allow_parent_access: bool
    data_sharing_consent: bool
    notification_preferences: dict[str, bool]

    @classmethod
    def of(cls, user: User) -> PrivacyView:
        return cls(
            allow_parent_access=user.allow_parent_access,
            data_sharing_consent=user.data_sharing_consent,
            notification_preferences=notification_preferences(user),
        )


def notification_preferences(user: User) -> dict[str, bool]:
    """The stored preferences over the defaults; keys the page does not know are not shown."""
    stored = user.notification_preferences or {}
    return {key: bool(stored.get(key, default)) for key, default in NOTIFICATION_DEFAULTS.items()}


def clean_notification_preferences(errors: FieldErrors, given: dict[str, Any], user: User) -> dict[str, bool]:
    """``given`` merged over the user's preferences; each unknown key and non-boolean value is a field error.

    The one check for every route that stores preferences (the privacy page and the profile), so no
    route keeps what the other refuses.
    """
    merged = notification_preferences(user)
    for key, value in given.items():
        field_name = f"notification_preferences.{key}"[:100]
        if key not in NOTIFICATION_DEFAULTS:
            errors.add(field_name, f"Unknown notification preference. Use: {', '.join(NOTIFICATION_DEFAULTS)}.")
        elif not isinstance(value, bool):
            errors.add(field_name, "Enter true or false.")
        else:
            merged[key] = value
    return merged


def clean_privacy_update(data: PrivacyUpdateRequest, user: User) -> dict[str, Any]:
    """The columns to set, or ValidationFailed naming each unknown key and non-boolean value."""
    errors = FieldErrors()
    columns: dict[str, Any] = {}
    if data.notification_preferences is not UNSET:
        columns["notification_preferences"] = clean_notification_preferences(
            errors, data.notification_preferences, user
        )
    if data.data_sharing_consent is not UNSET:
        columns["data_sharing_consent"] = data.data_sharing_consent
    errors.raise_if_any()
    return columns


def check_parent_access_allowed(user: User) -> None:
    if user.user_type not in PARENT_ACCESS_USER_TYPES:
        raise PermissionDenied(
            "Only adolescent accounts choose whether their parents can see their data.", code="not_an_adolescent"
        )
