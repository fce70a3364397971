"""Wire shapes of the admin panel's routes, as the panel reads them (clients/web-client.md, "Admin panel")."""

from __future__ import annotations

import datetime
import uuid

import msgspec

from app.authority import authority_of_user
from app.core.openapi import LooseBody
from app.db.models import LoginAttempt, User
from app.sessions.schemas import SessionView


class CreateUserRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"name", "phone_number", "password", "user_type"})
    name: str | None = None
    phone_number: str | None = None
    password: str | None = None
    user_type: str | None = None
    email: str | None = None
    is_active: bool = True


class ChangeRoleRequest(LooseBody, kw_only=True):
    required_fields = frozenset({"user_type"})
    user_type: str | None = None


class AdminUserView(msgspec.Struct, kw_only=True):
    """An account as the panel lists it: no hash, no secret."""

    id: int
    name: str
    phone_number: str | None  # None: a Flask-era account imported without a number, or a deleted one
    email: str | None
    user_type: str
    role: str
    authority: str  # user, support, security or admin (docs/authority.md): what the panel may do to it
    is_active: bool
    enable_pin_auth: bool
    created_at: datetime.datetime
    last_activity: datetime.datetime | None

    @classmethod
    def of(cls, user: User) -> AdminUserView:
        return cls(
            id=user.id,
            name=user.name,
            phone_number=user.phone_number,
            email=user.email,
            user_type=user.user_type,
            role=user.role,
            authority=authority_of_user(user).label,
            is_active=user.is_active,
            enable_pin_auth=user.enable_pin_auth,
            created_at=user.created_at,
            last_activity=user.last_activity,
        )


class UserListResponse(msgspec.Struct, kw_only=True):
    message: str
    users: list[AdminUserView]
    total: int
    pages: int
    current_page: int
    per_page: int
    has_prev: bool
    has_next: bool


class SignInView(msgspec.Struct, kw_only=True):
    created_at: datetime.datetime
    success: bool
    reason: str
    auth_method: str | None
    ip_address: str | None
    user_agent: str | None

    @classmethod
    def of(cls, attempt: LoginAttempt) -> SignInView:
        return cls(
            created_at=attempt.created_at,
            success=attempt.success,
            reason=attempt.reason,
            auth_method=attempt.auth_method,
            ip_address=str(attempt.ip_address) if attempt.ip_address is not None else None,
            user_agent=attempt.user_agent,
        )


class AdminUserDetail(msgspec.Struct, kw_only=True):
    id: int
    name: str
    phone_number: str | None
    email: str | None
    user_type: str
    role: str
    authority: str
    is_active: bool
    enable_pin_auth: bool
    created_at: datetime.datetime
    last_activity: datetime.datetime | None
    recovery_expires_at: datetime.datetime | None
    sessions: list[SessionView]
    last_sign_ins: list[SignInView]


class UserDetailResponse(msgspec.Struct, kw_only=True):
    message: str
    data: AdminUserDetail


class UserResponse(msgspec.Struct, kw_only=True):
    message: str
    user: AdminUserView


class RecoveryResponse(msgspec.Struct, kw_only=True):
    message: str
    recovery_code: str
    expires_at: datetime.datetime


class UnlockResponse(msgspec.Struct, kw_only=True):
    message: str
    locks_cleared: int


class SessionEndedResponse(msgspec.Struct, kw_only=True):
    message: str
    session_id: uuid.UUID
