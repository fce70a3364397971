"""The settings page's routes besides ``/api/settings/account`` (the profile handlers serve that one).

``clients/web-client.md``: the page loads the bundle, or on 404 the account, privacy and assistant
status separately, and reads ``enable_pin_auth`` from them; a page that could not load them sent
``enable_pin_auth: false`` on every save and turned PIN sign-in off.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.accounts.privacy import (
    ParentAccessRequest,
    PrivacyUpdateRequest,
    PrivacyView,
    check_parent_access_allowed,
    clean_privacy_update,
)
from app.accounts.schemas import UserView
from app.accounts.service import UserService
from app.core.errors import error_responses
from app.core.http import BODY_ERRORS
from app.core.openapi import SIGNED_IN
from app.db.models import User


class UmwariStatus(msgspec.Struct, kw_only=True):
    """The assistant's configuration is not this service's: only whether its server key is set."""

    server_key_configured: bool


class SettingsBundle(msgspec.Struct, kw_only=True):
    message: str
    account: UserView
    privacy: PrivacyView
    umwari: UmwariStatus


class PrivacyResponse(msgspec.Struct, kw_only=True):
    """``privacy`` (what the page reads), and its fields at the top level as well."""

    message: str
    privacy: PrivacyView
    allow_parent_access: bool
    data_sharing_consent: bool
    notification_preferences: dict[str, bool]

    @classmethod
    def of(cls, user: User, message: str) -> PrivacyResponse:
        view = PrivacyView.of(user)
        return cls(message=message, privacy=view, **msgspec.structs.asdict(view))


class UmwariStatusResponse(msgspec.Struct, kw_only=True):
    message: str
    umwari: UmwariStatus
    server_key_configured: bool


class ParentAccessResponse(msgspec.Struct, kw_only=True):
    message: str
    user: UserView
    privacy: PrivacyView


async def _save(users: UserService, user: User, columns: dict[str, Any]) -> None:
    for key, value in columns.items():
        setattr(user, key, value)
    await users.update(user, auto_commit=False, auto_refresh=False)


class SettingsController(Controller):
    path = "/api/settings"
    tags = ["settings"]
    security = SIGNED_IN

    @get(
        "/bundle",
        summary="Everything the settings page shows: account, privacy, assistant status",
        responses=error_responses(401),
        operation_id="getSettingsBundle",
    )
    async def bundle(self, current_user: NamedDependency[User], state: State) -> SettingsBundle:
        return SettingsBundle(
            message="Settings retrieved",
            account=UserView.of(current_user),
            privacy=PrivacyView.of(current_user),
            umwari=UmwariStatus(server_key_configured=state.settings.umwari_server_key_configured),
        )

    @get("/privacy", summary="Parent access, data sharing and notification preferences", responses=error_responses(401))
    async def get_privacy(self, current_user: NamedDependency[User]) -> PrivacyResponse:
        return PrivacyResponse.of(current_user, "Privacy settings retrieved")

    @put(
        "/privacy",
        summary="Change data sharing and notification preferences (merged over the defaults)",
        responses=error_responses(*BODY_ERRORS, 401),
    )
    async def update_privacy(
        self,
        data: JSONBody[PrivacyUpdateRequest],
        current_user: NamedDependency[User],
        users_service: NamedDependency[UserService],
    ) -> PrivacyResponse:
        await _save(users_service, current_user, clean_privacy_update(data, current_user))
        return PrivacyResponse.of(current_user, "Privacy settings updated")

    @put(
        "/privacy/parent-access",
        summary="An adolescent lets their parents see their data, or stops it",
        responses=error_responses(*BODY_ERRORS, 401, 403, s403="Not an adolescent account"),
    )
    async def update_parent_access(
        self,
        data: JSONBody[ParentAccessRequest],
        current_user: NamedDependency[User],
        users_service: NamedDependency[UserService],
    ) -> ParentAccessResponse:
        check_parent_access_allowed(current_user)
        await _save(users_service, current_user, {"allow_parent_access": data.allow_parent_access})
        return ParentAccessResponse(
            message="Parent access updated", user=UserView.of(current_user), privacy=PrivacyView.of(current_user)
        )

    @get(
        "/umwari/status",
        summary="Whether the assistant's server key is configured",
        responses=error_responses(401),
        operation_id="getUmwariStatus",
    )
    async def umwari_status(self, current_user: NamedDependency[User], state: State) -> UmwariStatusResponse:
        status = UmwariStatus(server_key_configured=state.settings.umwari_server_key_configured)
        return UmwariStatusResponse(
            message="Assistant status retrieved", umwari=status, server_key_configured=status.server_key_configured
        )
