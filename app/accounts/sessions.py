"""Sessions ("my devices"): list a user's live sessions, end one, end all but this one.

A session is a refresh-token family (``refresh_tokens.family_id``, the ``sid`` of its access
tokens). Its last use (time, client address, user agent) is kept in Redis, one hash per user,
noted only when a token is issued (sign-in) or refreshed and written in batches: never a database
write per request, and nothing at all on requests that only carry an access token. Without a Redis entry (tracking
off, or the entry expired) a session's last use is its newest token's issue time and user agent.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.exceptions
from litestar import Controller, Request, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from sqlalchemy import String, func, select
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by

from app.accounts.schemas import MessageResponse
from app.accounts.service import AuthService, RefreshTokenService, utcnow
from app.accounts.tokens import TokenClaims
from app.core.errors import AppError, error_responses
from app.core.http import user_agent_of
from app.core.redis import RedisClient
from app.core.settings import Settings
from app.db.models import RefreshToken, User

logger = logging.getLogger(__name__)


class SessionNotFound(AppError):
    status_code = 404
    code = "session_not_found"
    message = "No such session: it has ended already, or it is not yours."


class LastUse(msgspec.Struct, frozen=True):
    at: datetime.datetime
    ip: str | None = None
    ua: str | None = None


_encode_use = msgspec.json.Encoder().encode
_decode_use = msgspec.json.Decoder(LastUse).decode


class SessionUseTracker:
    """Last use of each session in one Redis hash per user (field: the family id), expiring with the tokens.

    Updates are batched: :meth:`touch` only notes the use in memory, and one pipeline writes every
    use noted in the last ``FLUSH_SECONDS`` (a burst of refreshes of one session is one write). A
    crash loses at most that much last-use information, never a request.
    """

    FLUSH_SECONDS = 0.25

    def __init__(self, redis_client: RedisClient, settings: Settings) -> None:
        self._redis = redis_client
        self._prefix = settings.redis_key_prefix
        self._ttl = settings.refresh_token_days * 86_400
        self.enabled = settings.session_last_use_tracking
        self._pending: dict[int, dict[str, bytes]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def key(self, user_id: int) -> str:
        return f"{self._prefix}session-use:{user_id}"

    async def touch(self, user_id: int, family: uuid.UUID, ip: str | None, user_agent: str | None) -> None:
        if not self.enabled:
            return
        value = _encode_use(LastUse(utcnow(), ip, user_agent_of(user_agent)))
        self._pending.setdefault(user_id, {})[str(family)] = value
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.FLUSH_SECONDS)
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write every noted use now; a Redis failure only loses these last-use updates."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user_id, uses in pending.items():
                pipe.hset(self.key(user_id), mapping=uses)  # type: ignore[arg-type]
                pipe.expire(self.key(user_id), self._ttl)
            await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("session last use not recorded: %s", exc)

    async def read(self, user_id: int) -> dict[str, LastUse]:
        if user_id in self._pending:
            await self.flush()
        try:
            raw = await self._redis.hgetall(self.key(user_id))
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("session last use unavailable: %s", exc)
            return {}
        uses: dict[str, LastUse] = {}
        for field, value in raw.items():
            try:
                name = field.decode() if isinstance(field, bytes) else field
                uses[name] = _decode_use(value)
            except (msgspec.DecodeError, UnicodeDecodeError):
                continue
        return uses

    async def forget(self, user_id: int, families: list[uuid.UUID] | None = None) -> None:
        """Drop ended sessions' entries (all of them when ``families`` is None)."""
        noted = self._pending.get(user_id, {})
        for family in families if families is not None else [uuid.UUID(name) for name in list(noted)]:
            noted.pop(str(family), None)
        try:
            if families is None:
                await self._redis.delete(self.key(user_id))
            elif families:
                await self._redis.hdel(self.key(user_id), *(str(f) for f in families))
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("session last use not cleared: %s", exc)


class SessionView(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    created_at: datetime.datetime
    last_used_at: datetime.datetime
    ip_address: str | None
    user_agent: str | None
    expires_at: datetime.datetime
    current: bool


class SessionsResponse(msgspec.Struct, kw_only=True):
    message: str
    sessions: list[SessionView]


@dataclass(frozen=True, slots=True)
class _Family:
    id: uuid.UUID
    created_at: datetime.datetime
    newest_at: datetime.datetime
    expires_at: datetime.datetime
    user_agent: str | None


async def live_sessions(
    tokens: RefreshTokenService, tracker: SessionUseTracker, user_id: int, current: uuid.UUID | None = None
) -> list[SessionView]:
    """Every session of the user that a refresh could still continue, most recently used first."""
    db = tokens.repository.session
    now = utcnow()
    revoked = select(RefreshToken.family_id).where(
        RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_not(None)
    )
    rows = (
        await db.execute(
            select(
                RefreshToken.family_id,
                func.min(RefreshToken.created_at),
                func.max(RefreshToken.created_at),
                func.max(RefreshToken.expires_at),
                # The user agent of the family's newest token.
                func.array_agg(
                    aggregate_order_by(RefreshToken.user_agent, RefreshToken.created_at.desc()), type_=ARRAY(String())
                )[1],
            )
            .where(RefreshToken.user_id == user_id, RefreshToken.family_id.not_in(revoked))
            .group_by(RefreshToken.family_id)
            .having(func.max(RefreshToken.expires_at) > now)
        )
    ).all()
    families = [_Family(row[0], row[1], row[2], row[3], row[4]) for row in rows]
    uses = await tracker.read(user_id)
    views = []
    for family in families:
        use = uses.get(str(family.id))
        views.append(
            SessionView(
                id=family.id,
                created_at=family.created_at,
                last_used_at=use.at if use else family.newest_at,
                ip_address=use.ip if use else None,
                user_agent=use.ua if use else family.user_agent,
                expires_at=family.expires_at,
                current=family.id == current,
            )
        )
    views.sort(key=lambda view: view.last_used_at, reverse=True)
    return views


async def end_session(tokens: RefreshTokenService, tracker: SessionUseTracker, user_id: int, family: uuid.UUID) -> None:
    """End one live session of ``user_id``; SessionNotFound when it is not theirs or already over."""
    db = tokens.repository.session
    owner = await db.scalar(
        select(RefreshToken.user_id)
        .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None), RefreshToken.expires_at > utcnow())
        .limit(1)
    )
    if owner != user_id:
        raise SessionNotFound()
    await tokens.revoke_family(family, reason="ended")
    await tracker.forget(user_id, [family])


async def end_other_sessions(auth: AuthService, tracker: SessionUseTracker, user_id: int, keep: uuid.UUID) -> int:
    """End every session of ``user_id`` but ``keep``; how many ended."""
    db = auth.tokens.repository.session
    others = list(
        (
            await db.scalars(
                select(RefreshToken.family_id)
                .where(
                    RefreshToken.user_id == user_id,
                    RefreshToken.family_id != keep,
                    RefreshToken.revoked_at.is_(None),
                )
                .distinct()
            )
        ).all()
    )
    for family in others:
        await auth.tokens.revoke_family(family, reason="logout_all")
    if others:
        await auth.events.sessions_revoked(user_id, reason="logout_all")
    await tracker.forget(user_id, others)
    return len(others)


async def read_whole_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard: routes that take no body still read it, so an oversized one is the usual 413, not ignored."""
    if isinstance(connection, Request) and connection.method in ("POST", "PUT", "PATCH", "DELETE"):
        await connection.body()


def session_tracker(state: State) -> SessionUseTracker:
    tracker: SessionUseTracker = state.session_tracker
    return tracker


class EndedResponse(msgspec.Struct, kw_only=True):
    message: str
    ended: int


class SessionsController(Controller):
    """The signed-in user's own sessions."""

    path = "/api/auth"
    tags = ["auth"]

    @get("/sessions", summary="My live sessions (devices), most recently used first", responses=error_responses(401))
    async def list_sessions(
        self,
        access_claims: NamedDependency[TokenClaims],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> SessionsResponse:
        sessions = await live_sessions(
            auth_service.tokens, session_tracker(state), current_user.id, current=access_claims.session_id
        )
        return SessionsResponse(message="Sessions retrieved", sessions=sessions)

    @delete(
        "/sessions/{session_id:uuid}",
        status_code=200,
        summary="End one of my sessions",
        responses=error_responses(401, 404, 413, 415),
    )
    async def end_one(
        self,
        session_id: FromPath[uuid.UUID],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> MessageResponse:
        await end_session(auth_service.tokens, session_tracker(state), current_user.id, session_id)
        return MessageResponse(message="Session ended")

    @post(
        "/logout-all",
        status_code=200,
        summary="End all my sessions but this one",
        responses=error_responses(401, 413, 415),
        guards=[read_whole_body],
    )
    async def logout_all(
        self,
        request: Request[Any, Any, Any],
        access_claims: NamedDependency[TokenClaims],
        current_user: NamedDependency[User],
        auth_service: NamedDependency[AuthService],
        state: State,
    ) -> EndedResponse:
        ended = await end_other_sessions(
            auth_service, session_tracker(state), current_user.id, access_claims.session_id
        )
        return EndedResponse(message="Signed out on every other device", ended=ended)
