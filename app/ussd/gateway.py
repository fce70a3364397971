"""The USSD gateway's credential check, audited.

A call refused for its credential (missing, unknown, revoked, a user's token, no ``ussd`` scope)
never reaches a :class:`~app.ussd.attempt.UssdAttempt`, yet it is someone trying the channel: it is
one row of the login history too (``channel = 'ussd'``, ``reason = 'bad_credential'``) with what is
known of the caller: the address, the credential's name when it is one of ours, the account when a
user's token was sent. The body is not read (nothing in it can be trusted before the credential).

The event goes through the publisher's bounded append, like every other audit event: a flood of
refused calls costs one stream entry each and can never hold more than the stream's share of
``AUDIT_MAX_BACKLOG`` in Redis (past it, Postgres directly), so it cannot grow Redis without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.pipeline.events import new_event
from app.audit.pipeline.publisher import AuditUnavailable
from app.core.http import request_id_of, user_agent_of
from app.platform.credentials import CredentialRefusal, ServiceClient, require_scope
from app.ussd.attempt import UssdAttempt
from app.ussd.schemas import decode_object, peek_identity

logger = logging.getLogger(__name__)


def require_gateway() -> Callable[..., Awaitable[ServiceClient]]:
    """``require_scope("ussd")`` whose refusals are audited before they answer."""
    check = require_scope("ussd")

    async def gateway(
        request: Request[Any, Any, Any], state: State, db_session: NamedDependency[AsyncSession]
    ) -> ServiceClient:
        try:
            return await check(request, state, db_session)
        except CredentialRefusal as refused:
            await record_refusal(request, state, refused)
            raise

    return gateway


async def record_refusal(request: Request[Any, Any, Any], state: State, refused: CredentialRefusal) -> None:
    address = state.client_resolver.address_of(request.scope)
    event = new_event(
        phone_number="",
        success=False,
        reason="bad_credential",
        user_id=refused.user_id,
        ip_address=str(address) if address is not None else None,
        user_agent=user_agent_of(request.headers.get("user-agent")),
        request_id=request_id_of(request),
        channel="ussd",
        service_name=refused.credential_name,
    )
    try:
        await state.audit_publisher.publish(event, state.client_resolver.client_key(address))
    except AuditUnavailable:
        # The call is refused anyway; failing it differently would tell the caller about our stores.
        logger.error("a USSD call refused for its credential could not be audited: Redis and Postgres refused it")


def gateway_attempt(request: Request[Any, Any, Any], state: State, gateway: ServiceClient) -> UssdAttempt:
    """One USSD call of the gateway, as one audited attempt under the gateway credential's budgets."""
    return UssdAttempt(
        limiter=state.limiter,
        publisher=state.audit_publisher,
        client_key=gateway.name,
        ip_address=gateway.client_ip,
        user_agent=user_agent_of(request.headers.get("user-agent")),
        request_id=request_id_of(request),
        fail_open=state.settings.rate_limit_fail_open,
        method="pin",
        service_name=gateway.name,
    )


async def gateway_body(request: Request[Any, Any, Any], attempt: UssdAttempt, region: str) -> dict[str, Any]:
    """The JSON object sent; the attempt learns the number and session it names, for its audit row."""
    body = decode_object(await request.body())
    attempt.phone_number, attempt.session_id = peek_identity(body, region)
    return body
