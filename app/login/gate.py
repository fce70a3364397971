"""The login endpoint's gate: the client's failure budget is taken here, before any handler runs.

Plain ASGI in front of the login route. A refused attempt is answered straight from here, with the
check and its audit event in one Redis script call, so an attack costs Redis one round trip and
never reaches body injection, validation or hashing. An allowed attempt carries its reservation
to the handler in a :class:`LoginAttempt`, which this gate makes sure is recorded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from typing import Any

import msgspec
import uuid_utils
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Counter

from app.audit.pipeline.events import LoginEvent, encode_event
from app.audit.pipeline.publisher import AuditPublisher, AuditUnavailable
from app.core.errors import LimiterUnavailable, PayloadTooLarge, RateLimited, try_again_in
from app.core.http import Answer, error_answer, send_answer, send_error, user_agent_of
from app.core.phones import PhoneNumberError, normalise_phone
from app.core.prometheus import NAMESPACE
from app.core.settings import Settings
from app.login.attempt import LoginAttempt
from app.ratelimit.client_ip import ClientResolver
from app.ratelimit.limiter import Decision, LoginLimiter, rate_limit_headers

logger = logging.getLogger(__name__)

ATTEMPT_STATE_KEY = "login_attempt"
# Refusals answered here never reach Litestar's request metrics: count them ourselves.
LOGIN_REFUSED = Counter(
    "login_refused", "Login attempts refused before any handler ran, by reason.", ["reason"], namespace=NAMESPACE
)
_RATE_LIMITED = LOGIN_REFUSED.labels("rate_limited")  # bound once: every refusal counts here
# One answer per distinct wait (whole seconds up to the window, 900 by default) and budget.
REFUSAL_ANSWERS_CACHED = 4096


class _LoginPeek(msgspec.Struct):
    """Just enough of the body to label the audit event; any shape is accepted here."""

    phone_number: Any = None
    password: Any = None
    pin: Any = None


_peek_decoder = msgspec.json.Decoder(_LoginPeek)


def peek_login(body: bytes, region: str) -> tuple[str, str | None]:
    """(phone number as E.164 or raw text cut to 20, auth method) for the audit event."""
    try:
        peek = _peek_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return "", None
    phone = peek.phone_number if isinstance(peek.phone_number, str) else ""
    try:
        phone = normalise_phone(phone, region, strict=False)
    except PhoneNumberError:
        phone = phone[:20]
    method = "pin" if peek.pin not in (None, "") and not peek.password else "password"
    return phone, method


async def read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Any]]:
    """The whole body and the messages to replay to the app; ``None`` when it is over ``limit``."""
    chunks: list[bytes] = []
    messages: list[Any] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            messages.append(message)
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, []
        chunks.append(chunk)
        messages.append(message)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def _replaying(messages: list[Any], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


LOGIN_PATH = "/api/auth/login"


class LoginGate:
    """The gate, as plain ASGI.

    ``create_asgi_app`` puts it in front of routing and Litestar's middleware stack (only CORS, whose
    headers its refusals need, comes before it), so a refusal costs as little as possible; it is
    also the login route's own middleware, which
    passes an already-gated request straight through, so the route is never served ungated.
    """

    def __init__(self, app: ASGIApp, litestar: Litestar | None = None) -> None:
        self.app = app
        self.litestar = litestar

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope["method"] != "POST"
            or ATTEMPT_STATE_KEY in scope.get("state", {})
            or (self.litestar is not None and scope["path"] != LOGIN_PATH)
        ):
            await self.app(scope, receive, send)
            return
        await self.gate(scope, receive, send)

    async def gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = (self.litestar or Litestar.from_scope(scope)).state
        settings: Settings = state.settings
        limiter: LoginLimiter = state.limiter
        publisher: AuditPublisher = state.audit_publisher
        resolver: ClientResolver = state.client_resolver

        body, messages = await read_body(receive, settings.max_body_bytes)
        address = resolver.address_of(scope)
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or str(uuid_utils.uuid4())
        attempt = LoginAttempt(
            limiter=limiter,
            publisher=publisher,
            client_key=resolver.client_key(address),
            ip_address=str(address) if address is not None else None,
            user_agent=user_agent_of(headers.get(b"user-agent")),
            request_id=request_id,
            fail_open=settings.rate_limit_fail_open,
        )
        if body is None:
            await _record_unfinished(attempt)
            await send_error(send, PayloadTooLarge(), {})
            return
        attempt.phone_number, method = peek_login(body, settings.default_phone_region)
        attempt.method = method  # type: ignore[assignment]

        refusal = attempt.event("rate_limited")
        try:
            decision = await limiter.reserve_client(attempt.client_key, refusal_event=encode_event(refusal))
        except LimiterUnavailable as unavailable:
            if not settings.rate_limit_fail_open:
                LOGIN_REFUSED.labels("limiter_unavailable").inc()
                await attempt.refuse_unavailable()
                await send_error(send, unavailable, {})
                return
            logger.warning("rate limiter unavailable; login allowed without a budget (RATE_LIMIT_FAIL_OPEN)")
            decision = None

        if decision is not None and not decision.allowed:
            _RATE_LIMITED.inc()
            if decision.event_queued:
                publisher.metrics.events_published.inc()  # the reserve script appended the refusal
            else:
                await _store_refusal(publisher, refusal)  # its audit stream is full (AUDIT_MAX_BACKLOG)
            await send_answer(send, refusal_answer(decision.retry_after, decision.limit, decision.window))
            return

        attempt.client_decision = decision
        scope.setdefault("state", {})[ATTEMPT_STATE_KEY] = attempt
        try:
            await self.app(scope, _replaying(messages, receive), send)
        finally:
            if not attempt.recorded:
                # Shielded: a client hanging up must not cost us the audit record.
                await asyncio.shield(_record_unfinished(attempt))


@lru_cache(maxsize=REFUSAL_ANSWERS_CACHED)
def refusal_answer(retry_after: int, limit: int, window: int) -> Answer:
    """The 429 of a client whose budget is spent, the error mapping's answer, made once per wait:
    every refusal with the same ``Retry-After`` is the same bytes."""
    spent = Decision(False, limit, 0, retry_after, window, None, "rate_limited")
    refused = RateLimited(
        f"Too many failed sign-in attempts. {try_again_in(retry_after)}",
        headers={"Retry-After": str(retry_after), **rate_limit_headers("login", spent)},
        extra={"retry_after": retry_after},
    )
    return error_answer(refused, {})


def login_gate_factory(app: ASGIApp) -> ASGIApp:
    """The login route's middleware (a fallback when the app is served without the outer gate)."""
    return LoginGate(app)


async def _record_unfinished(attempt: LoginAttempt) -> None:
    try:
        await attempt.record_unfinished()
    except AuditUnavailable:
        logger.error("login attempt could not be audited: Redis and Postgres both refused it")


async def _store_refusal(publisher: AuditPublisher, refusal: LoginEvent) -> None:
    try:
        await publisher.store_directly(refusal, backlog_full=True)
    except AuditUnavailable:
        logger.error("login refusal could not be audited: its stream is full and Postgres refused it")
