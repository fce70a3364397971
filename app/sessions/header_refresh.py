"""The header form of refresh, answered in front of routing, at the cost of its one statement.

``POST /api/auth/refresh`` with ``Authorization: Bearer rt_…`` and no body is the Flask-era form
every app start and every 401 of the field client sends, and it does not rotate (unless
``REFRESH_ROTATION=always``). Its work is one prepared statement (``SessionChecks.refresh_without_rotation``)
and one signature; through Litestar, routing, the kwargs model, the body parameter and the
dependency layers cost about as much again. Here it is answered as plain ASGI, like the login
gate's refusals, with the same body, headers and request metrics as the route's answer.

Anything else goes on to the route, which stays the one complete definition of refresh: another
form or shape, a token the statement does not find (the route asks ``SessionService.refresh``,
which knows every reason, and does not send the statement again), and an error of the statement
(the route raises it, so it gets the app's one error mapping: 503 ``database_unavailable``,
``busy`` and the rest).
"""

from __future__ import annotations

import time
from typing import Final

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.core.http import send_json, user_agent_of
from app.core.request_metrics import observe_answer
from app.core.settings import Settings
from app.ratelimit.client_ip import ClientResolver
from app.sessions.direct import SessionChecks
from app.sessions.schemas import RefreshResponse
from app.sessions.tokens import is_opaque_refresh_token

REFRESH_PATH: Final = "/api/auth/refresh"
# Scope state the route reads: what this path already tried for the request it passed on.
TRIED_STATE_KEY: Final = "header_refresh_tried"


class NotFoundDirectly:
    """The statement found no live session for the token: the route asks the ORM way, without sending it again."""


NOT_FOUND_DIRECTLY: Final = NotFoundDirectly()
_encoder = msgspec.json.Encoder()


def header_form_token(scope: Scope) -> str | None:
    """The opaque refresh token of a header-form refresh with no body; None for anything else."""
    token: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if token is not None:
                return None  # two of them: the route decides
            scheme, _, rest = value.decode("latin-1").partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else ""
        elif (name == b"content-length" and value not in (b"", b"0")) or name == b"transfer-encoding":
            return None  # a body: the body form, or a body the route must read
    return token if token and is_opaque_refresh_token(token) else None


class HeaderRefresh:
    """Plain ASGI in front of routing; passes on every request it does not answer."""

    def __init__(self, app: ASGIApp, litestar: Litestar) -> None:
        self.app = app
        self.litestar = litestar

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST" or scope["path"] != REFRESH_PATH:
            await self.app(scope, receive, send)
            return
        state = self.litestar.state
        settings: Settings = state.settings
        token = header_form_token(scope) if settings.refresh_rotation != "always" else None
        if token is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        checks: SessionChecks = state.session_checks
        resolver: ClientResolver = state.client_resolver
        address = resolver.address_of(scope)
        user_agent = next((value for name, value in scope["headers"] if name == b"user-agent"), None)
        try:
            found = await checks.refresh_without_rotation(
                token, str(address) if address is not None else None, user_agent_of(user_agent)
            )
        except Exception as exc:  # handed to the route, which raises it into the app's error mapping
            scope.setdefault("state", {})[TRIED_STATE_KEY] = exc
            await self.app(scope, receive, send)
            return
        if found is None:
            scope.setdefault("state", {})[TRIED_STATE_KEY] = NOT_FOUND_DIRECTLY
            await self.app(scope, receive, send)
            return
        body = _encoder.encode(RefreshResponse.of(state.token_issuer, found))
        await send_json(send, 200, body, {})
        observe_answer("POST", REFRESH_PATH, 200, time.perf_counter() - started)
