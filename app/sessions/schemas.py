"""Shapes of the session routes: refresh, logout and the device list."""

from __future__ import annotations

import datetime
import uuid

import msgspec
from msgspec import UNSET, UnsetType

from app.db.models import Session


class MessageResponse(msgspec.Struct, kw_only=True):
    message: str


class RefreshRequest(msgspec.Struct, kw_only=True):
    refresh_token: str | None = None


class RefreshResponse(msgspec.Struct, kw_only=True):
    message: str
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str | UnsetType = UNSET


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
