"""What the OpenAPI document says beyond the handlers' own types: who may call, operation ids, body contracts.

- **Security.** The schemes a caller can present (a user's access or refresh token, a service's
  ``les_`` credential as Bearer or HTTP Basic, a client-credentials access token), and the
  requirements controllers declare: ``SIGNED_IN`` for routes behind the signed-in user, ``service(scope)``
  for the platform's services. tests/core/test_openapi.py checks that every route whose dependencies
  authenticate the caller declares one.
- **Operation ids** are the handler's name in lowerCamelCase (``get_profile`` → ``getProfile``), or
  the ``operation_id`` a handler gives; Litestar refuses a document with two alike.
- **Loose bodies, strict contract.** Request structs decode every field as optional (``str | None``)
  so that one 400 can name every field's problem at once (app/accounts/forms.py). Such a struct
  lists what the API actually needs in ``required_fields``; :class:`RequiredFieldsPlugin` writes that
  into its schema, without ``null`` for those fields, so generated clients cannot build a body the
  API refuses for a missing field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OAuthFlow,
    OAuthFlows,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.plugins import OpenAPISchemaPlugin
from litestar.types import Method
from litestar.typing import FieldDefinition

# ---- security -------------------------------------------------------------------------------------

USER_TOKEN = "userToken"  # noqa: S105 - scheme names, not secrets
REFRESH_TOKEN = "refreshToken"  # noqa: S105
SERVICE_CREDENTIAL = "serviceCredential"
CLIENT_SECRET_BASIC = "clientSecretBasic"  # noqa: S105
SERVICE_ACCESS_TOKEN = "serviceAccessToken"  # noqa: S105

SIGNED_IN: list[SecurityRequirement] = [{USER_TOKEN: []}]
# Refresh and logout also take the refresh token in the JSON body (the empty requirement: no header then).
REFRESH: list[SecurityRequirement] = [{REFRESH_TOKEN: []}, {}]
LOGOUT: list[SecurityRequirement] = [{USER_TOKEN: []}, {REFRESH_TOKEN: []}, {}]
# The token endpoint takes the credential itself, never an access token (client_secret_post: body fields).
CLIENT_CREDENTIAL: list[SecurityRequirement] = [{CLIENT_SECRET_BASIC: []}, {SERVICE_CREDENTIAL: []}]


def service(scope: str) -> list[SecurityRequirement]:
    """A service credential holding ``scope``, presented any way the guard accepts."""
    return [{SERVICE_CREDENTIAL: []}, {CLIENT_SECRET_BASIC: []}, {SERVICE_ACCESS_TOKEN: [scope]}]


def security_schemes(token_url: str, scopes: Mapping[str, str]) -> dict[str, SecurityScheme | Reference]:
    """The components' ``securitySchemes``; ``scopes`` are the service credentials' (app/platform/scopes.py)."""
    return {
        USER_TOKEN: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="JWT",
            description="A user's access token (from register, login or refresh), as `Authorization: Bearer`.",
        ),
        REFRESH_TOKEN: SecurityScheme(
            type="http",
            scheme="bearer",
            description="A user's refresh token (opaque), as `Authorization: Bearer`; or `refresh_token` in the body.",
        ),
        SERVICE_CREDENTIAL: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="les_ token",
            description="A service credential's static `les_` token (`ladys-essence services create`), as Bearer.",
        ),
        CLIENT_SECRET_BASIC: SecurityScheme(
            type="http",
            scheme="basic",
            description="client_secret_basic: the credential's name and its `les_` token. On form bodies the same "
            "two values may be sent as the fields `client_id` and `client_secret` (client_secret_post).",
        ),
        SERVICE_ACCESS_TOKEN: SecurityScheme(
            type="oauth2",
            description="A short-lived access token from the client-credentials grant, as Bearer.",
            flows=OAuthFlows(client_credentials=OAuthFlow(token_url=token_url, scopes=dict(scopes))),
        ),
    }


# ---- operation ids -----------------------------------------------------------------------------


def camel_case(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def operation_id(route_handler: HTTPRouteHandler, http_method: Method, path_components: list[Any]) -> str:
    """``OpenAPIConfig.operation_id_creator``: the handler's name (``get_profile`` → ``getProfile``)."""
    return camel_case(route_handler.handler_name)


def per_path(ids: Mapping[str, str]) -> Any:
    """An ``operation_id`` for a handler served at several paths: the id of each path."""

    def creator(route_handler: HTTPRouteHandler, http_method: Method, path_components: list[Any]) -> str:
        path = "/" + "/".join(str(getattr(part, "name", part)) for part in path_components)
        return ids[path]

    return creator


# ---- loose bodies, strict contract -------------------------------------------------------------


class LooseBody(msgspec.Struct, kw_only=True):
    """A request body whose fields all decode as optional; ``required_fields`` are what the API needs."""

    required_fields: ClassVar[frozenset[str]] = frozenset()


class RequiredFieldsPlugin(OpenAPISchemaPlugin):
    """The schema of a :class:`LooseBody`: the stock struct schema, with its contract's required fields.

    The stock schema comes from Litestar's own msgspec plugin, which Litestar does not export publicly
    (the lock pins it; tests/core/test_openapi.py fails if required fields go missing).
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(LooseBody)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = StructSchemaPlugin().to_openapi_schema(field_definition, schema_creator)
        required: frozenset[str] = field_definition.annotation.required_fields
        assert schema.properties is not None and required <= schema.properties.keys(), required
        schema.required = sorted(required)
        for name in required:
            field_schema = schema.properties[name]
            if isinstance(field_schema, Schema):
                _not_null(field_schema)
        return schema


def _not_null(schema: Schema) -> None:
    """``T | None`` as ``T``: a required field's null is refused like its absence."""
    if schema.one_of:
        arms = [arm for arm in schema.one_of if not (isinstance(arm, Schema) and arm.type == OpenAPIType.NULL)]
        if len(arms) == 1 and isinstance(arms[0], Schema) and arms[0].type is not None:
            schema.type, schema.one_of = arms[0].type, None
        else:
            schema.one_of = arms
    if schema.enum:
        schema.enum = [value for value in schema.enum if value is not None]


def query_type(kind: OpenAPIType, **constraints: Any) -> dict[str, Any]:
    """``schema_extra`` for a query parameter read as text and checked by hand: the type it must have."""
    return {"type": kind, "one_of": None, **constraints}


# ---- Litestar's generic 400 ---------------------------------------------------------------------


@dataclass
class PathOnlyOperation(Operation):
    """A route whose only parameters are typed path segments (``{user_id:int}``, ``{session_id:uuid}``).

    Litestar documents a 400 of its own shape for any route with parameters, but a segment of the
    wrong type matches no route (404), and every error here is ``{message, code}`` (app/core/errors.py):
    that 400 is never sent, so it is left out.
    """

    def __post_init__(self) -> None:
        if self.responses is not None:
            self.responses.pop("400", None)


# ---- bodies a handler reads itself ----------------------------------------------------------------


def json_object(required: list[str], **properties: Schema) -> RequestBody:
    """A JSON object body, for a route that reads and checks its body itself (no ``data`` parameter)."""
    assert set(required) <= properties.keys()
    schema = Schema(type=OpenAPIType.OBJECT, properties=dict(properties), required=required)
    return RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema=schema)})


def with_body(request_body: RequestBody) -> type[Operation]:
    """The operation class of such a route: its body, in the document."""

    @dataclass
    class BodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = request_body

    return BodyOperation
