"""The OpenAPI document against the application it describes: valid, guarded where the routes are, and
listing only errors the routes really send, in the shape they send them.

"Guarded" is read from each route's dependencies (the providers that authenticate a caller), and
checked again by calling every operation without credentials; the documented error statuses are
checked by sending every operation an oversized and a non-JSON body with valid credentials.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.serialization import decode_json, encode_json
from openapi_spec_validator import validate

from app.core.settings import Settings
from app.platform.controller import FORM_BODY_PATHS, TOKEN_PATH
from app.platform.scopes import SCOPES
from app.sessions.deps import provide_access_claims, provide_signed_in
from tests.conftest import plain_dsn
from tests.helpers import bearer, registered
from tests.platform.support import new_credential

Operation = tuple[str, str]  # (method, path as documented)


def document_of(app: Litestar) -> dict[str, Any]:
    document: dict[str, Any] = decode_json(encode_json(app.openapi_schema.to_schema()))
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_the_document_is_valid_openapi(app: Litestar) -> None:
    validate(document_of(app))


def test_every_error_response_is_the_apis_error_body(app: Litestar) -> None:
    """``{message, code, ...}`` (app/core/errors.py), never Litestar's ``{status_code, detail}``."""
    document = document_of(app)
    assert "status_code" not in document["components"]["schemas"]["ErrorBody"]["properties"]
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/health":  # /health's 503 is its own body, with the checks
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status, schema)


def test_operation_ids_are_readable(app: Litestar) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document_of(app))]
    assert len(ids) == len(set(ids))
    assert [name for name in ids if not re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)*", name)] == []
    assert {"login", "register", "refreshTokens", "getProfile", "introspectToken"} <= set(ids)


# ---- guarded operations ----------------------------------------------------------------------------


def authenticates(provider: Provide) -> bool:
    """A provider that reads the caller's credential: a user's access token, or a service credential."""
    function = provider.dependency
    qualified = getattr(function, "__qualname__", "")
    return function in (provide_access_claims, provide_signed_in) or qualified.startswith(
        ("require_scope.", "require_gateway.")
    )


def guarded_by_dependencies(handler: HTTPRouteHandler) -> bool:
    """Whether any dependency the handler asks for, or any they ask for in turn, authenticates the caller."""
    dependencies = handler.resolve_dependencies()
    waiting = [name for name in handler.parsed_fn_signature.parameters if name in dependencies]
    seen: set[str] = set()
    while waiting:
        name = waiting.pop()
        if name in seen:
            continue
        seen.add(name)
        provider = dependencies[name]
        if authenticates(provider):
            return True
        waiting += [inner for inner in provider.parsed_fn_signature.parameters if inner in dependencies]
    return False


def documented_routes(app: Litestar) -> Iterator[tuple[Operation, HTTPRouteHandler]]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.resolve_include_in_schema():
                for method in handler.http_methods:
                    yield (method, route.path_format), handler


def test_every_route_its_dependencies_guard_has_a_security_requirement(app: Litestar) -> None:
    document = document_of(app)
    guarded = {operation for operation, handler in documented_routes(app) if guarded_by_dependencies(handler)}
    assert len(guarded) > 30, "the walk finds the signed-in, staff and service routes"
    schemes = document["components"]["securitySchemes"]
    for method, path in guarded:
        security = document["paths"][path][method.lower()].get("security")
        assert security, f"{method} {path} is guarded by its dependencies but documents no security"
        assert {} not in security, f"{method} {path} cannot be called without credentials"
        assert {name for requirement in security for name in requirement} <= schemes.keys()


# ---- the answers, against the document -------------------------------------------------------------


class Callers:
    """Valid credentials of every kind the document names: an admin's tokens and an all-scopes service."""

    def __init__(self, session: dict[str, Any], service_name: str, service_token: str) -> None:
        self.session = session
        self.service_name, self.service_token = service_name, service_token

    def headers(self, security: list[dict[str, list[str]]], path: str) -> dict[str, str]:
        names = {name for requirement in security for name in requirement}
        if "userToken" in names:
            return bearer(self.session["access_token"])
        if "refreshToken" in names:
            return bearer(self.session["refresh_token"])
        if names & {"serviceCredential", "clientSecretBasic"}:
            if path == TOKEN_PATH:
                basic = httpx.BasicAuth(self.service_name, self.service_token)
                return {"Authorization": next(basic.auth_flow(httpx.Request("POST", "/"))).headers["Authorization"]}
            return bearer(self.service_token)
        return {}


@pytest.fixture
async def callers(client: Any, settings: Settings) -> Callers:
    session = await registered(client)
    conn = await asyncpg.connect(plain_dsn(settings))
    try:  # as `users create-admin --promote` would: every staff route is then reachable
        await conn.execute("UPDATE users SET role = 'admin' WHERE id = $1", session["user_id"])
    finally:
        await conn.close()
    name = f"openapi-{uuid.uuid4().hex[:8]}"
    return Callers(session, name, await new_credential(settings, name, *SCOPES))


def concrete(path: str) -> str:
    """A path of the template that names nothing that exists."""
    path = path.replace("{user_id}", "987654321")
    return path.replace("{session_id}", str(uuid.uuid4()))


async def test_an_operation_that_refuses_a_caller_without_credentials_documents_its_security(
    app: Litestar, client: Any
) -> None:
    document = document_of(app)
    wrong: list[tuple[str, str, int, str]] = []
    for method, path, operation in operations(document):
        response = await client.request(method, concrete(path), json={} if method in ("POST", "PUT", "PATCH") else None)
        security = operation.get("security") or []
        if str(response.status_code) not in operation["responses"]:
            wrong.append((method, path, response.status_code, "undocumented"))
        if response.status_code == 401 and not security:
            wrong.append((method, path, response.status_code, "401 without credentials, but no security documented"))
        if security and {} not in security and response.status_code != 401:
            wrong.append((method, path, response.status_code, "documents security, but answers without credentials"))
    assert wrong == [], "\n".join(map(str, wrong))


async def test_documented_body_errors_are_the_ones_sent(app: Litestar, client: Any, callers: Callers) -> None:
    """Each operation, with valid credentials, sent a body over the limit and a body that is not JSON:
    413 and 415 come back exactly where the document lists them."""
    document = document_of(app)
    oversized = b'{"x": "' + b"a" * app.state.settings.max_body_bytes + b'"}'
    wrong: list[tuple[str, str, str, int]] = []
    for method, path, operation in operations(document):
        headers = callers.headers(operation.get("security") or [], path)
        documented = operation["responses"]
        json_headers = {**headers, "content-type": "application/json"}
        too_large = await client.request(method, concrete(path), content=oversized, headers=json_headers)
        if (too_large.status_code == 413) != ("413" in documented):
            wrong.append((method, path, "oversized", too_large.status_code))
        csv_headers = {**headers, "content-type": "text/csv"}
        content = b"token=x" if path in FORM_BODY_PATHS else b"name,phone"
        not_json = await client.request(method, concrete(path), content=content, headers=csv_headers)
        if (not_json.status_code == 415) != ("415" in documented):
            wrong.append((method, path, "not JSON", not_json.status_code))
        for answer in (too_large, not_json):
            if answer.status_code >= 400 and str(answer.status_code) not in documented:
                wrong.append((method, path, "undocumented", answer.status_code))
    assert wrong == [], "\n".join(map(str, wrong))


async def test_bad_parameters_get_documented_answers(app: Litestar, client: Any, callers: Callers) -> None:
    """The admin list's page, per_page and is_active are documented as integer and boolean: values of
    those types are taken, others are a documented 400 naming the field; a path segment of the wrong
    type is a documented 404 (not Litestar's 400)."""
    paths = document_of(app)["paths"]
    as_admin = bearer(callers.session["access_token"])
    listing = paths["/api/admin/users"]["get"]
    types = {parameter["name"]: parameter["schema"]["type"] for parameter in listing["parameters"]}
    assert (types["page"], types["per_page"], types["is_active"]) == ("integer", "integer", "boolean")
    taken = await client.get("/api/admin/users", params={"page": 1, "per_page": 5, "is_active": True}, headers=as_admin)
    assert taken.status_code == 200 and taken.json()["per_page"] == 5
    for name, value in (("page", "first"), ("per_page", "0"), ("is_active", "maybe")):
        refused = await client.get("/api/admin/users", params={name: value}, headers=as_admin)
        assert str(refused.status_code) in listing["responses"] and refused.status_code == 400
        assert [error["field"] for error in refused.json()["errors"]] == [name]
    for method, template, path, headers in (
        ("delete", "/api/auth/sessions/{session_id}", "/api/auth/sessions/not-a-uuid", as_admin),
        ("get", "/api/internal/users/{user_id}", "/api/internal/users/abc", bearer(callers.service_token)),
        ("get", "/api/admin/users/{user_id}", "/api/admin/users/12x", as_admin),
    ):
        answer = await client.request(method, path, headers=headers)
        assert answer.status_code == 404 and "404" in paths[template][method]["responses"]
        assert "400" not in paths[template][method]["responses"]
        assert set(answer.json()) >= {"message", "code"}


async def test_every_field_a_body_documents_as_required_is_required(
    app: Litestar, client: Any, callers: Callers
) -> None:
    """Each JSON body with required fields, sent empty with valid credentials: a 400 naming every one of them
    (the structs decode loosely, app/core/openapi.py; the document must not claim more than the API asks)."""
    document = document_of(app)
    schemas = document["components"]["schemas"]
    checked: list[tuple[str, str]] = []
    wrong: list[tuple[str, str, int, list[str], list[str]]] = []
    for method, path, operation in operations(document):
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue  # no body, or the RFCs' form bodies (tests/platform/test_standards.py)
        schema = media["schema"]
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        required = sorted(schema.get("required") or [])
        if not required:
            continue
        headers = callers.headers(operation.get("security") or [], path)
        answer = await client.request(method, concrete(path), json={}, headers=headers)
        named = sorted({error["field"] for error in answer.json().get("errors", [])})
        if answer.status_code != 400 or not set(required) <= set(named):
            wrong.append((method, path, answer.status_code, required, named))
        checked.append((method, path))
    assert wrong == [], "\n".join(map(str, wrong))
    assert {("POST", "/api/auth/login"), ("POST", "/api/auth/register"), ("POST", "/api/ussd/verify-pin")} <= set(
        checked
    )
