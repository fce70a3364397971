"""What the rest of the platform calls: discovery, the JWKS, tokens for services, introspection, account reads.

Discovery (RFC 8414) and the JWKS are public. The token endpoint (client credentials, RFC 6749
section 4.4), introspection and the internal users API take a service credential
(app/platform/credentials.py); every introspection and read is recorded in the security team's query
log, as a staff query of the login history is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.schemas import UserView
from app.authority import Authority, scopes_of
from app.core.errors import (
    AppError,
    ErrorBody,
    FieldError,
    UnsupportedMediaType,
    ValidationFailed,
    error_responses,
)
from app.core.openapi import CLIENT_CREDENTIAL, PathOnlyOperation, per_path, service
from app.core.settings import Settings
from app.db.models import User
from app.platform.credentials import (
    CLIENT_AUTH_METHODS,
    FORM_MEDIA_TYPE,
    ServiceClient,
    authenticate_client,
    record_service_query,
    require_scope,
)
from app.platform.introspection import Introspection, TokenTypeHint, audit_filters, introspect
from app.platform.scopes import SCOPES
from app.platform.service_tokens import issue_service_token

INTROSPECT_PATH = "/api/auth/introspect"
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
JWKS_PATH = "/.well-known/jwks.json"
# Routes whose body may be a form (RFC 7662, RFC 6749); every other body must be JSON (app/asgi.py).
FORM_BODY_PATHS = frozenset({INTROSPECT_PATH, TOKEN_PATH})
TOKEN_HINTS: tuple[str, ...] = get_args(TokenTypeHint)
SIGNING_ALGORITHMS = ["ES256", "EdDSA"]  # every algorithm a key of the JWKS can have (JWT_ALGORITHM)
MAX_USER_ID = 2**63 - 1


class UnknownUser(AppError):
    status_code = 404
    code = "user_not_found"
    message = "There is no account with this id."


class JsonWebKeySet(msgspec.Struct):
    """RFC 7517: the public keys that verify tokens still alive (``kid``, ``alg``, ``use: sig``)."""

    keys: list[dict[str, Any]]


def server_metadata(settings: Settings) -> dict[str, Any]:
    """RFC 8414 section 2: where a peer that knows only the issuer finds the rest.

    ``id_token_signing_alg_values_supported`` is an OpenID member, but it is where stock verifiers
    (express-oauth2-jwt-bearer, openid-client) read which algorithms sign the tokens; there are no ID
    tokens. There is no authorization endpoint either: ``response_types_supported`` is ``none`` (the
    member is required, and stock validators refuse an empty list).
    """
    base = settings.public_url
    user_scopes = sorted({scope for authority in Authority for scope in scopes_of(authority)})
    return {
        "issuer": settings.jwt_issuer,
        "jwks_uri": base + JWKS_PATH,
        "token_endpoint": base + TOKEN_PATH,
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint": base + INTROSPECT_PATH,
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["none"],
        "scopes_supported": [*user_scopes, *sorted(SCOPES)],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": SIGNING_ALGORITHMS,
        "service_documentation": base + "/docs",
    }


class DiscoveryController(Controller):
    path = "/.well-known"
    tags = ["platform"]

    @get(
        ["/oauth-authorization-server", "/openid-configuration"],
        summary="Authorization server metadata (RFC 8414): issuer, jwks_uri, token and introspection endpoints",
        operation_id=per_path(
            {
                "/.well-known/oauth-authorization-server": "getAuthorizationServerMetadata",
                "/.well-known/openid-configuration": "getOpenidConfiguration",
            }
        ),
    )
    async def metadata(self, state: State) -> Response[dict[str, Any]]:
        return Response(
            server_metadata(state.settings),
            headers={"Cache-Control": f"public, max-age={state.settings.jwks_max_age_seconds}"},
            media_type="application/json",
        )

    @get("/jwks.json", summary="Public keys that verify this service's tokens (RFC 7517)", operation_id="getJwks")
    async def jwks(self, state: State) -> Response[JsonWebKeySet]:
        max_age = state.settings.jwks_max_age_seconds
        return Response(
            JsonWebKeySet(keys=state.keyring.jwks()["keys"]),
            headers={"Cache-Control": f"public, max-age={max_age}"},
            media_type="application/json",
        )


async def _body_fields(request: Request[Any, Any, Any], what: str) -> dict[str, Any]:
    """The fields of a form body (as RFC 6749 and 7662 say) or a JSON one."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(FORM_MEDIA_TYPE):
        return dict((await request.form()).items())
    if "json" in content_type:
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            raise AppError("The request body is not valid JSON.", code="malformed_json") from exc
        return body if isinstance(body, dict) else {}
    if not await request.body():
        return {}
    raise UnsupportedMediaType(f"Send {what} as a form ({FORM_MEDIA_TYPE}) or as JSON.")


def _form_schema(properties: dict[str, Schema], required: list[str]) -> RequestBody:
    schema = Schema(type=OpenAPIType.OBJECT, properties=properties, required=required)  # type: ignore[arg-type]
    # One media type: the RFCs' form. A JSON object with the same fields is accepted too, but a second
    # media type makes openapi-python-client generate a module that does not import (its Unset).
    return RequestBody(
        required=True,
        description=(
            "A form, as RFC 6749 and RFC 7662 say. A JSON object with the same fields is accepted too, except"
            " the client's credentials: with JSON they go in the Authorization header (Basic or Bearer)."
        ),
        content={FORM_MEDIA_TYPE: OpenAPIMediaType(schema=schema)},
    )


CLIENT_POST_FIELDS = {
    "client_id": Schema(type=OpenAPIType.STRING, description="client_secret_post: the credential's name"),
    "client_secret": Schema(type=OpenAPIType.STRING, description="client_secret_post: the les_ token"),
}


@dataclass
class IntrospectOperation(Operation):
    """The body the handler reads itself (form or JSON), in the OpenAPI document."""

    def __post_init__(self) -> None:
        self.request_body = _form_schema(
            {
                "token": Schema(type=OpenAPIType.STRING, description="The token to introspect"),
                "token_type_hint": Schema(type=OpenAPIType.STRING, enum=list(TOKEN_HINTS)),
                **CLIENT_POST_FIELDS,
            },
            ["token"],
        )


@dataclass
class TokenOperation(Operation):
    """The body the handler reads itself (form or JSON), in the OpenAPI document."""

    def __post_init__(self) -> None:
        self.request_body = _form_schema(
            {
                "grant_type": Schema(type=OpenAPIType.STRING, enum=["client_credentials"]),
                "scope": Schema(type=OpenAPIType.STRING, description="Space-separated; default: the credential's"),
                **CLIENT_POST_FIELDS,
            },
            ["grant_type"],
        )


class TokenResponse(msgspec.Struct):
    """RFC 6749 section 5.1."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str


class OAuthError(AppError):
    """RFC 6749 section 5.2: ``error`` beside this API's ``message`` and ``code``."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message, code=error, extra={"error": error, "error_description": message})


class TokenController(Controller):
    path = TOKEN_PATH
    tags = ["platform"]

    @post(
        "/",
        status_code=200,
        summary="An access token for a service (RFC 6749 client credentials; client_secret_basic or _post)",
        responses=error_responses(400, 401, 413, 415),
        operation_class=TokenOperation,
        security=CLIENT_CREDENTIAL,
        operation_id="requestServiceToken",
    )
    async def token(
        self, request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession], state: State
    ) -> Response[TokenResponse]:
        fields = await _body_fields(request, "the grant")
        client = await authenticate_client(request, state, db_session, access_tokens=False)
        if fields.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "This endpoint grants client_credentials only.")
        requested = fields.get("scope")
        scopes = sorted(client.scopes) if not requested else str(requested).split()
        if not set(scopes) <= client.scopes:
            raise OAuthError("invalid_scope", f"This credential holds only: {' '.join(sorted(client.scopes))}.")
        assert client.credential_id is not None, "authenticated by its les_ secret (access_tokens=False)"
        issued = issue_service_token(state.keyring, state.settings, client.name, client.credential_id, scopes)
        return Response(
            TokenResponse(issued.token, "Bearer", state.settings.client_credentials_token_seconds, issued.scope),
            headers={"Cache-Control": "no-store"},
        )


class IntrospectionController(Controller):
    path = "/api/auth"
    tags = ["platform"]
    dependencies = {"introspector": Provide(require_scope("introspect"))}
    security = service("introspect")

    @post(
        "/introspect",
        status_code=200,
        summary="Is a token active? (RFC 7662; a service credential with `introspect`)",
        responses=error_responses(400, 401, 403, 413, 415),
        operation_class=IntrospectOperation,
        operation_id="introspectToken",
    )
    async def introspect(
        self,
        request: Request[Any, Any, Any],
        introspector: NamedDependency[ServiceClient],
        db_session: NamedDependency[AsyncSession],
        state: State,
    ) -> Introspection:
        fields = await _body_fields(request, "the token")
        token = fields.get("token")
        if not isinstance(token, str) or not token.strip():
            raise ValidationFailed([FieldError("token", "Send the token to introspect.")])
        hint = fields.get("token_type_hint")
        result = await introspect(
            token.strip(),
            state.token_issuer,
            state.keyring,
            db_session,
            state.settings,
            hint if hint in TOKEN_HINTS else None,  # RFC 7662 section 2.1: an unknown hint is ignored
        )
        await record_service_query(db_session, introspector, "introspect", audit_filters(result), int(result.active))
        return result


class InternalUsersController(Controller):
    path = "/api/internal/users"
    tags = ["platform"]
    dependencies = {"user_reader": Provide(require_scope("users:read"))}
    security = service("users:read")

    @get(
        "/{user_id:int}",
        summary="An account's profile fields, no secrets (a service credential with `users:read`)",
        responses={
            **error_responses(401, 403),
            404: ResponseSpec(ErrorBody, description="No account with this id", generate_examples=False),
        },
        operation_id="getInternalUser",
        operation_class=PathOnlyOperation,
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


PLATFORM_HANDLERS = [DiscoveryController, TokenController, IntrospectionController, InternalUsersController]
