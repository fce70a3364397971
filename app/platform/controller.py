"""What the rest of the platform calls: the JWKS, token introspection, and account reads.

The JWKS is public. Introspection and the internal users API take a service credential with the
right scope (app/platform/credentials.py); every such call is recorded in the security team's query
log, as a staff query of the login history is.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.schemas import UserView
from app.core.errors import (
    AppError,
    ErrorBody,
    FieldError,
    UnsupportedMediaType,
    ValidationFailed,
    error_responses,
)
from app.db.models import User
from app.platform.credentials import ServiceClient, record_service_query, require_scope
from app.platform.introspection import Introspection, audit_filters, introspect

INTROSPECT_PATH = "/api/auth/introspect"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# Routes whose body may be a form (RFC 7662); every other body must be JSON (app/asgi.py).
FORM_BODY_PATHS = frozenset({INTROSPECT_PATH})
MAX_USER_ID = 2**63 - 1


class UnknownUser(AppError):
    status_code = 404
    code = "user_not_found"
    message = "There is no account with this id."


class JsonWebKeySet(msgspec.Struct):
    """RFC 7517: the public keys that verify tokens still alive (``kid``, ``alg``, ``use: sig``)."""

    keys: list[dict[str, Any]]


class JwksController(Controller):
    path = "/.well-known"
    tags = ["platform"]

    @get("/jwks.json", summary="Public keys that verify this service's tokens (RFC 7517)")
    async def jwks(self, state: State) -> Response[JsonWebKeySet]:
        max_age = state.settings.jwks_max_age_seconds
        return Response(
            JsonWebKeySet(keys=state.keyring.jwks()["keys"]),
            headers={"Cache-Control": f"public, max-age={max_age}"},
            media_type="application/json",
        )


async def _token_field(request: Request[Any, Any, Any]) -> str:
    """``token`` from a form body (as RFC 7662 says) or a JSON one."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(FORM_MEDIA_TYPE):
        value: Any = (await request.form()).get("token")
    elif "json" in content_type:
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            raise AppError("The request body is not valid JSON.", code="malformed_json") from exc
        value = body.get("token") if isinstance(body, dict) else None
    elif not await request.body():
        value = None
    else:
        raise UnsupportedMediaType(f"Send the token as a form ({FORM_MEDIA_TYPE}) or as JSON.")
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed([FieldError("token", "Send the token to introspect.")])
    return value.strip()


class IntrospectionController(Controller):
    path = "/api/auth"
    tags = ["platform"]
    dependencies = {"introspector": Provide(require_scope("introspect"))}

    @post(
        "/introspect",
        status_code=200,
        summary="Is a token active? (RFC 7662; form field or JSON `token`; a service credential with `introspect`)",
        responses=error_responses(400, 401, 403, 415),
    )
    async def introspect(
        self,
        request: Request[Any, Any, Any],
        introspector: NamedDependency[ServiceClient],
        db_session: NamedDependency[AsyncSession],
        state: State,
    ) -> Introspection:
        token = await _token_field(request)
        result = await introspect(token, state.token_issuer, db_session, state.settings)
        await record_service_query(db_session, introspector, "introspect", audit_filters(result), int(result.active))
        return result


class InternalUsersController(Controller):
    path = "/api/internal/users"
    tags = ["platform"]
    dependencies = {"user_reader": Provide(require_scope("users:read"))}

    @get(
        "/{user_id:int}",
        summary="An account's profile fields, no secrets (a service credential with `users:read`)",
        responses={
            **error_responses(401, 403),
            404: ResponseSpec(ErrorBody, description="No account with this id", generate_examples=False),
        },
    )
    async def read_user(
        self,
        user_id: FromPath[int],
        user_reader: NamedDependency[ServiceClient],
        db_session: NamedDependency[AsyncSession],
    ) -> UserView:
        user = await db_session.scalar(select(User).where(User.id == user_id)) if 0 < user_id <= MAX_USER_ID else None
        await record_service_query(db_session, user_reader, "user", {"user_id": user_id}, int(user is not None))
        if user is None:
            await db_session.commit()  # the record of the read outlives the 404
            raise UnknownUser()
        return UserView.of(user)


PLATFORM_HANDLERS = [JwksController, IntrospectionController, InternalUsersController]
