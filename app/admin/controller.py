"""The admin panel's account routes, at the paths and in the shapes the panel already uses.

Reachable by the authorities the panel is for (:mod:`app.authority`: support, the Flask-era
``user_type = 'admin'``, and admins, ``role = 'admin'``); 401 without a valid token, 403 for everybody
else, security analysts included (what each may do to which account, the service asks the same
module). Query parameters go through the history's one validator
(:class:`app.audit.history.params.Params`); bodies through the registration's rules.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIType
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.forms import NewAccount, clean_registration
from app.accounts.guards import PANEL_DEPENDENCY
from app.accounts.schemas import MessageResponse, RegisterRequest
from app.admin.schemas import (
    AdminUserDetail,
    AdminUserView,
    ChangeRoleRequest,
    CreateUserRequest,
    RecoveryResponse,
    SessionEndedResponse,
    SignInView,
    UnlockResponse,
    UserDetailResponse,
    UserListResponse,
    UserResponse,
)
from app.admin.service import MAX_PER_PAGE, AdminService, ResetPasswordRetired, UserQuery
from app.audit.history.params import Params
from app.audit.history.query_log import actor_of
from app.core.errors import FieldError, FieldErrors, ValidationFailed, error_responses
from app.core.http import read_whole_body
from app.core.openapi import SIGNED_IN, PathOnlyOperation, query_type
from app.db.models import USER_TYPES, User

# Only bodies and query parameters can be a 400; a GET is never 413 or 415 (no body is read), nor is a
# DELETE 415 (bodies are read only to refuse an oversized one: app/core/http.py read_whole_body).
LIST_ERRORS = error_responses(400, 401, 403)
ONE_ACCOUNT_ERRORS = error_responses(401, 403, 404)
CREATE_ERRORS = error_responses(400, 401, 403, 409, 413, 415)
BODY_CHANGE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415)
CHANGE_ERRORS = error_responses(401, 403, 404, 409, 413, 415)
DELETE_ERRORS = error_responses(401, 403, 404, 409, 413)
USER_TYPE_MESSAGE = f"Choose one of: {', '.join(USER_TYPES)}."


async def provide_admin_service(db_session: NamedDependency[AsyncSession], state: State) -> AdminService:
    return AdminService(db_session, state.hasher, state.limiter, state.redis, state.settings)


def _query(description: str, schema: dict[str, Any] | None = None) -> Any:
    return QueryParameter(description=description, required=False, schema_extra=schema)


# Read as text so that parse_user_query names every bad one at once; documented as what they must be.
MAX_PAGE = 1_000_000
Page = Annotated[
    str | None, _query("Page number from 1 (default 1).", query_type(OpenAPIType.INTEGER, minimum=1, maximum=MAX_PAGE))
]
PerPage = Annotated[
    str | None,
    _query(
        f"Accounts per page, 1 to {MAX_PER_PAGE} (default 20; more is capped).",
        query_type(OpenAPIType.INTEGER, minimum=1),
    ),
]
UserType = Annotated[str | None, _query(USER_TYPE_MESSAGE, query_type(OpenAPIType.STRING, enum=list(USER_TYPES)))]
Search = Annotated[
    str | None,
    _query(
        "Part of the name or email, or the phone number in any form (or its digits).",
        query_type(OpenAPIType.STRING, max_length=100),
    ),
]
IsActive = Annotated[str | None, _query("true or false.", query_type(OpenAPIType.BOOLEAN))]


def parse_user_query(values: dict[str, str | None]) -> UserQuery:
    params = Params(values)
    page = params.whole_number("page", maximum=MAX_PAGE) or 1
    per_page = params.whole_number("per_page") or 20
    user_type = params.choice("user_type", USER_TYPES, USER_TYPE_MESSAGE)
    is_active = params.boolean("is_active")
    search = params.text("search", max_length=100)
    params.raise_if_any()
    return UserQuery(page, min(per_page, MAX_PER_PAGE), user_type, is_active, search)


def clean_new_user(data: CreateUserRequest, region: str) -> tuple[NewAccount, str]:
    """The registration's checks (name, phone, password rules, email), with the staff user types allowed."""
    user_type = (data.user_type or "").strip().lower()
    errors = FieldErrors()
    if user_type not in USER_TYPES:
        errors.add("user_type", USER_TYPE_MESSAGE)
    request = RegisterRequest(
        name=data.name, phone_number=data.phone_number, password=data.password, user_type="parent", email=data.email
    )
    try:
        account = clean_registration(request, region)
    except ValidationFailed as failed:
        for item in failed.errors:
            errors.add(item.field, item.message)
        errors.raise_if_any()
        raise
    errors.raise_if_any()
    return account, user_type


class AdminController(Controller):
    path = "/api/admin/users"
    tags = ["admin"]
    security = SIGNED_IN
    guards = [read_whole_body]
    dependencies = {"panel_admin": PANEL_DEPENDENCY, "admin_service": Provide(provide_admin_service)}

    @get("/", summary="Accounts, newest first, searched and paginated", responses=LIST_ERRORS)
    async def list_users(
        self,
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        page: Page = None,
        per_page: PerPage = None,
        user_type: UserType = None,
        search: Search = None,
        is_active: IsActive = None,
    ) -> UserListResponse:
        query = parse_user_query(
            {"page": page, "per_page": per_page, "user_type": user_type, "search": search, "is_active": is_active}
        )
        result = await admin_service.list_users(query)
        return UserListResponse(
            message="Users retrieved",
            users=[AdminUserView.of(user) for user in result.users],
            total=result.total,
            pages=result.pages,
            current_page=result.page,
            per_page=result.per_page,
            has_prev=result.page > 1,
            has_next=result.page < result.pages,
        )

    @post(
        "/create",
        status_code=201,
        summary="Create an account (a support account, user type admin, by an admin only)",
        responses=CREATE_ERRORS,
    )
    async def create_user(
        self,
        data: JSONBody[CreateUserRequest],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> UserResponse:
        account, user_type = clean_new_user(data, state.settings.default_phone_region)
        user = await admin_service.create_user(
            actor_of(panel_admin, request, state),
            name=account.name,
            phone_number=account.phone_number,
            password=account.password,
            user_type=user_type,
            email=account.email,
            is_active=data.is_active,
        )
        return UserResponse(message="User created successfully", user=AdminUserView.of(user))

    @get(
        "/{user_id:int}",
        summary="One account with its sessions and last sign-ins",
        responses=ONE_ACCOUNT_ERRORS,
        operation_class=PathOnlyOperation,
    )
    async def get_user(
        self, user_id: FromPath[int], panel_admin: NamedDependency[User], admin_service: NamedDependency[AdminService]
    ) -> UserDetailResponse:
        user = await admin_service.get_user(user_id)
        view = AdminUserView.of(user)
        detail = AdminUserDetail(
            **msgspec.structs.asdict(view),
            recovery_expires_at=user.recovery_expires_at,
            sessions=await admin_service.live_sessions(user.id),
            last_sign_ins=[SignInView.of(row) for row in await admin_service.last_sign_ins(user)],
        )
        return UserDetailResponse(message="User retrieved", data=detail)

    @patch(
        "/{user_id:int}/toggle-status",
        summary="Activate, or deactivate (ends every session)",
        responses=CHANGE_ERRORS,
        operation_id="toggleUserStatus",
        operation_class=PathOnlyOperation,
    )
    async def toggle_status(
        self,
        user_id: FromPath[int],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> UserResponse:
        user = await admin_service.toggle_status(actor_of(panel_admin, request, state), user_id)
        message = "User activated successfully" if user.is_active else "User deactivated successfully"
        return UserResponse(message=message, user=AdminUserView.of(user))

    @patch(
        "/{user_id:int}/change-role",
        summary="Change the Flask-era user type (never to admin: users create-admin --promote)",
        responses=BODY_CHANGE_ERRORS,
        operation_id="changeUserType",
    )
    async def change_role(
        self,
        user_id: FromPath[int],
        data: JSONBody[ChangeRoleRequest],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> UserResponse:
        user_type = (data.user_type or "").strip().lower()
        if user_type not in USER_TYPES:
            raise ValidationFailed([FieldError("user_type", USER_TYPE_MESSAGE)])
        user = await admin_service.change_user_type(actor_of(panel_admin, request, state), user_id, user_type)
        return UserResponse(message=f"User role changed to {user_type}", user=AdminUserView.of(user))

    @delete(
        "/{user_id:int}",
        status_code=200,
        summary="Deactivate and erase personal data",
        responses=DELETE_ERRORS,
        operation_class=PathOnlyOperation,
    )
    async def delete_user(
        self,
        user_id: FromPath[int],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> MessageResponse:
        await admin_service.delete_user(actor_of(panel_admin, request, state), user_id)
        return MessageResponse(message="User deleted successfully")

    @patch(
        "/{user_id:int}/reset-password",
        summary="Retired: answers 409 and says how to issue a recovery code instead",
        responses=CHANGE_ERRORS,
        operation_class=PathOnlyOperation,
    )
    async def reset_password(
        self,
        user_id: FromPath[int],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> MessageResponse:
        await admin_service.record_reset_refused(actor_of(panel_admin, request, state), user_id)
        raise ResetPasswordRetired(state.settings.recovery_ttl_hours)

    @post(
        "/{user_id:int}/recovery",
        status_code=200,
        summary="Issue a one-time temporary password (shown once; not for staff); ends every session, lifts the locks",
        responses=CHANGE_ERRORS,
        operation_id="issueRecoveryCode",
        operation_class=PathOnlyOperation,
    )
    async def issue_recovery(
        self,
        user_id: FromPath[int],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> RecoveryResponse:
        recovery = await admin_service.issue_recovery(actor_of(panel_admin, request, state), user_id)
        return RecoveryResponse(
            message=(
                "Read this one-time code to the user. They sign in with it as their password, once, "
                "before it expires, and then set a new password (and PIN) in their settings. It is not shown again."
            ),
            recovery_code=recovery.code,
            expires_at=recovery.expires_at,
        )

    @post(
        "/{user_id:int}/unlock",
        status_code=200,
        summary="Lift the PIN lock and the number's password budget",
        responses=CHANGE_ERRORS,
        operation_id="unlockUser",
        operation_class=PathOnlyOperation,
    )
    async def unlock(
        self,
        user_id: FromPath[int],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> UnlockResponse:
        cleared = await admin_service.unlock(actor_of(panel_admin, request, state), user_id)
        return UnlockResponse(message="Sign-in locks lifted for this number", locks_cleared=cleared)

    @delete(
        "/{user_id:int}/sessions/{session_id:uuid}",
        status_code=200,
        summary="End one of the account's sessions",
        responses=DELETE_ERRORS,
        operation_id="endUserSession",
        operation_class=PathOnlyOperation,
    )
    async def end_session(
        self,
        user_id: FromPath[int],
        session_id: FromPath[uuid.UUID],
        request: Request[Any, Any, Any],
        panel_admin: NamedDependency[User],
        admin_service: NamedDependency[AdminService],
        state: State,
    ) -> SessionEndedResponse:
        await admin_service.end_session(actor_of(panel_admin, request, state), user_id, session_id)
        return SessionEndedResponse(message="Session ended", session_id=session_id)
