"""HTTP side of sessions: refresh, logout, and the signed-in user's device list.

Refresh takes the token as ``Authorization: Bearer`` with no body (the Flask-era form the field
client uses: a new access token, the refresh token kept) or as ``{"refresh_token": ...}`` (rotated,
per ``REFRESH_ROTATION``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Body, FromPath

from app.core.errors import AppError, InvalidToken, NotAuthenticated, error_responses
from app.core.http import BODY_ERRORS, OptionalBodyOperation, optional_json_body, read_whole_body
from app.core.openapi import LOGOUT, REFRESH, SIGNED_IN, PathOnlyOperation
from app.core.settings import Settings
from app.db.models import User
from app.sessions.deps import bearer_token, client_use
from app.sessions.direct import SessionChecks
from app.sessions.header_refresh import NOT_FOUND_DIRECTLY, TRIED_STATE_KEY
from app.sessions.schemas import (
    EndedResponse,
    MessageResponse,
    RefreshRequest,
    RefreshResponse,
    SessionsResponse,
    SessionView,
)
from app.sessions.service import ClientUse, Refreshed, SessionService
from app.sessions.tokens import TokenClaims, TokenIssuer, is_opaque_refresh_token

RefreshForm = Literal["header", "body"]
_refresh_body: msgspec.json.Decoder[RefreshRequest | None] = msgspec.json.Decoder(RefreshRequest | None)


class SessionNotFound(AppError):
    status_code = 404
    code = "session_not_found"
    message = "No such session: it has ended already, or it is not yours."


def rotates(settings: Settings, form: RefreshForm) -> bool:
    mode = settings.refresh_rotation
    return mode == "always" or (mode == "auto" and form == "body")


async def session_to_end(token: str, sessions: SessionService, issuer: TokenIssuer) -> uuid.UUID:
    """The session a logout names: an access token's (an expired one too: it may still end its own session),
    or a refresh token's, under the refresh endpoint's rules (a replaced or expired one ends nothing)."""
    if not is_opaque_refresh_token(token):
        try:
            return issuer.decode_access(token, allow_expired=True).session_id
        except InvalidToken:
            pass
    found = await sessions.owner_of_refresh_token(token)
    if found is None:
        raise InvalidToken()
    return found[1].id


async def refresh_session(token: str, use: ClientUse, state: State, *, rotate: bool, tried: object = None) -> Refreshed:
    """A refresh is one prepared statement (app/sessions/direct.py); anything it does not find goes
    through :meth:`SessionService.refresh`, which knows every reason (and ends a reused token's session).

    ``tried``: what the header form's path in front of routing (app/sessions/header_refresh.py) got
    from that statement for this request, when it passed the request on: not found, or an error.
    """
    if isinstance(tried, Exception):
        raise tried
    if is_opaque_refresh_token(token) and tried is not NOT_FOUND_DIRECTLY:
        checks: SessionChecks = state.session_checks
        refresh = checks.refresh_with_rotation if rotate else checks.refresh_without_rotation
        found = await refresh(token, use.ip_address, use.user_agent)
        if found is not None:
            return Refreshed(
                found.user_id, found.role, found.session_id, found.auth_time, found.refresh_token, found.user_type
            )
    async with state.db_config.get_session() as db:
        refreshed = await SessionService(db, state.token_issuer, state.settings).refresh(token, use, rotate=rotate)
        await db.commit()
    return refreshed


class SessionsController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post(
        "/refresh",
        status_code=200,
        summary="New access token from a refresh token (Bearer header, or JSON body which rotates it)",
        responses=error_responses(*BODY_ERRORS, 401),
        operation_class=OptionalBodyOperation,
        security=REFRESH,
        operation_id="refreshTokens",
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[RefreshRequest | None, Body(description="Optional: the body form")] = None,
    ) -> RefreshResponse:
        body = await optional_json_body(request, _refresh_body)
        token: str | None
        form: RefreshForm
        if body is not None and body.refresh_token:
            token, form = body.refresh_token, "body"
        else:
            token, form = bearer_token(request), "header"
        if not token:
            raise NotAuthenticated("Send the refresh token as a Bearer token or as refresh_token.")
        tried = request.scope["state"].pop(TRIED_STATE_KEY, None) if form == "header" else None
        refreshed = await refresh_session(
            token, client_use(request, state), state, rotate=rotates(state.settings, form), tried=tried
        )
        return RefreshResponse.of(state.token_issuer, refreshed)

    @post(
        "/logout",
        status_code=200,
        summary="End this session: its refresh tokens and access tokens",
        responses=error_responses(*BODY_ERRORS, 401),
        operation_class=OptionalBodyOperation,
        security=LOGOUT,
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        session_service: NamedDependency[SessionService],
        state: State,
        data: Annotated[RefreshRequest | None, Body(description="Optional: the refresh token")] = None,
    ) -> MessageResponse:
        body = await optional_json_body(request, _refresh_body)
        token = bearer_token(request) or (body.refresh_token if body else None)
        if not token:
            raise NotAuthenticated()
        await session_service.end_one(await session_to_end(token, session_service, state.token_issuer), "logout")
        return MessageResponse(message="Logged out successfully")

    @get(
        "/sessions",
        summary="My live sessions (devices), most recently used first",
        responses=error_responses(401),
        security=SIGNED_IN,
    )
    async def list_sessions(
        self,
        access_claims: NamedDependency[TokenClaims],
        current_user: NamedDependency[User],
        session_service: NamedDependency[SessionService],
    ) -> SessionsResponse:
        sessions = await session_service.live_sessions(current_user.id)
        views = [SessionView.of(session, current=access_claims.session_id) for session in sessions]
        return SessionsResponse(message="Sessions retrieved", sessions=views)

    @delete(
        "/sessions/{session_id:uuid}",
        status_code=200,
        summary="End one of my sessions",
        responses=error_responses(401, 404),
        security=SIGNED_IN,
        operation_id="endSession",
        operation_class=PathOnlyOperation,
    )
    async def end_one(
        self,
        session_id: FromPath[uuid.UUID],
        current_user: NamedDependency[User],
        session_service: NamedDependency[SessionService],
    ) -> MessageResponse:
        if not await session_service.end_one(session_id, "ended", user_id=current_user.id):
            raise SessionNotFound()
        return MessageResponse(message="Session ended")

    @post(
        "/logout-all",
        status_code=200,
        summary="End all my sessions but this one",
        responses=error_responses(401, 413, 415),
        guards=[read_whole_body],
        security=SIGNED_IN,
    )
    async def logout_all(
        self,
        access_claims: NamedDependency[TokenClaims],
        current_user: NamedDependency[User],
        session_service: NamedDependency[SessionService],
    ) -> EndedResponse:
        ended = await session_service.end_all(current_user.id, "logout_all", keep=access_claims.session_id)
        return EndedResponse(message="Signed out on every other device", ended=len(ended))
