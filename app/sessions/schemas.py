"""Shapes of the session routes: refresh, logout and the device list."""

from __future__ import annotations

import datetime
import uuid
from typing import Protocol

import msgspec
from msgspec import UNSET, UnsetType

from app.db.models import Session
from app.sessions.tokens import TokenIssuer


class MessageResponse(msgspec.Struct, kw_only=True):
    message: str


class RefreshRequest(msgspec.Struct, kw_only=True):
    refresh_token: str | None = None


class RefreshedSession(Protocol):
    """A live session's refresh, as the route (``Refreshed``) and the header form's path (``FoundSession``) find it."""

    @property
    def user_id(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def user_type(self) -> str | None: ...
    @property
    def session_id(self) -> uuid.UUID: ...
    @property
    def auth_time(self) -> datetime.datetime | None: ...
    @property
    def refresh_token(self) -> str | None: ...


class RefreshResponse(msgspec.Struct, kw_only=True):
    message: str
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str | UnsetType = UNSET

    @classmethod
    def of(cls, issuer: TokenIssuer, refreshed: RefreshedSession) -> RefreshResponse:
        """The answer to a refresh: a new access token for the session, and its rotated refresh token if any."""
        access = issuer.issue_access(
            user_id=refreshed.user_id,
            role=refreshed.role,
            user_type=refreshed.user_type,
            session_id=refreshed.session_id,
            auth_time=refreshed.auth_time,
        )
        response = cls(
            message="Token refreshed",
            access_token=access.token,
            expires_in=int(issuer.access_lifetime.total_seconds()),
        )
        if refreshed.refresh_token is not None:
            response.refresh_token = refreshed.refresh_token
        return response


class SessionView(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    channel: str
    created_at: datetime.datetime
    last_used_at: datetime.datetime
    ip_address: str | None
    user_agent: str | None
    expires_at: datetime.datetime
    current: bool

    @classmethod
    def of(cls, session: Session, current: uuid.UUID | None = None) -> SessionView:
        return cls(
            id=session.id,
            channel=session.channel,
            created_at=session.created_at,
            last_used_at=session.last_used_at,
            ip_address=str(session.last_ip) if session.last_ip is not None else None,
            user_agent=session.last_user_agent,
            expires_at=session.expires_at,
            current=session.id == current,
        )


class SessionsResponse(msgspec.Struct, kw_only=True):
    message: str
    sessions: list[SessionView]


class EndedResponse(msgspec.Struct, kw_only=True):
    message: str
    ended: int
