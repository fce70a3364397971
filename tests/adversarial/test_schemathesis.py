"""Every operation of the OpenAPI document, fuzzed by schemathesis: no 5xx, every response as documented.

The document is taken from the application itself at collection time, so every route it lists is
fuzzed; the cases go to a real app (real Postgres and Redis, login gate in front, as served) whose
lifespan schemathesis' ASGI transport runs. Random data rarely registers or signs in, so the answers
the fuzzer seldom reaches (201, 409, 401, 403, 429, 503) are produced on purpose and checked against
the same document.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.serialization import decode_json, encode_json
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.asgi import create_app
from app.core.settings import Settings
from app.login.gate import LoginGate
from tests.conftest import plain_dsn
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, new_phone, registered

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# /metrics comes from Litestar's PrometheusController, registered as is in app/asgi.py: its document
# entry claims JSON for the Prometheus text (see test_metrics_is_documented_as_prometheus_text).
METRICS_CHECKS = [not_a_server_error, status_code_conformance]
# The export answers text/csv or application/x-ndjson while its document entry still says JSON; that
# entry is being corrected separately (issue 17, item 18's media types). Until it is merged, the
# export is fuzzed for everything but its media type: when merging, drop this and its use below.
EXPORT_PATH = "/api/audit/login-attempts/export"
EXPORT_CHECKS_UNTIL_MEDIA_TYPES_DOCUMENTED = [
    not_a_server_error,
    status_code_conformance,
    response_headers_conformance,
]
# Operations that need a signed-in user: three cases in four are signed in (as an admin, so that the
# security team's routes are fuzzed past their role guard too), the fourth is not.
SIGNED_IN = ("/api/auth/profile", "/api/settings/account", "/api/auth/logout", "/api/auth/refresh")
STAFF_ONLY = "/api/audit/"
# Signed-in cases that got a 2xx, per operation: test_every_guarded_operation_was_fuzzed_past_its_guard.
PAST_GUARD: Counter[str] = Counter()


def guarded(path: str) -> bool:
    return path in SIGNED_IN or path.startswith(STAFF_ONLY)


def guarded_operations() -> set[str]:
    return {f"{method.upper()} {path}" for path, ops in DOCUMENT["paths"].items() for method in ops if guarded(path)}


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document; building the app connects to nothing."""
    offline = Settings.from_env(
        {}, app_env="test", database_url="postgresql://offline.invalid/none", jwt_secret="d" * 40, pin_pepper="e" * 40
    )
    document: dict[str, Any] = decode_json(encode_json(create_app(offline).openapi_schema.to_schema()))
    return document


DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def assert_documented(method: str, path: str, response: Any) -> dict[str, Any]:
    """The status is one the document lists for the operation, and the body matches its schema."""
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    schema[path][method.upper()].validate_response(response)
    body: dict[str, Any] = response.json()
    return body


# ---- fuzzing ------------------------------------------------------------------------------------


class Served:
    """The app as create_asgi_app serves it, with the lifespan schemathesis' transport starts."""

    def __init__(self, app_settings: Settings) -> None:
        app = create_app(app_settings)
        self.app = LoginGate(app, litestar=app)
        self.dsn = plain_dsn(app_settings)
        self.turn = itertools.count()
        self._session: dict[str, Any] | None = None

    def session(self, *, fresh: bool) -> dict[str, Any]:
        """An admin's tokens; one is reused, and each logout case gets a session of its own to end."""
        if fresh or self._session is None:
            with asgi.get_client(self.app) as client:
                response = client.post(
                    "/api/auth/register",
                    json={"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD},
                )
            assert response.status_code == 201, response.text
            session: dict[str, Any] = response.json()
            asyncio.run(self._make_admin(session["user_id"]))  # as `users create-admin --promote` would
            if fresh:
                return session
            self._session = session
        return self._session

    async def _make_admin(self, user_id: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("UPDATE users SET role = 'admin' WHERE id = $1", user_id)
        finally:
            await conn.close()


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    # Budgets high enough that the fuzzer reaches validation and hashing rather than 429 after ten calls.
    roomy = msgspec.structs.replace(
        settings, register_limit=100_000, rate_limit_login_failures=100_000, account_max_failures=100_000
    )
    target = Served(roomy)
    yield target
    asgi.shutdown_lifespans()  # stops the app (audit writer, pools) before the tables are emptied


def test_fuzzed_document_is_the_served_one(served: Served) -> None:
    with asgi.get_client(served.app) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json()["paths"] == DOCUMENT["paths"]
    assert {"/health", "/api/auth/register", "/api/auth/login", "/api/auth/profile"} <= DOCUMENT["paths"].keys()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, served: Served) -> None:
    signed_in = guarded(case.path) and next(served.turn) % 4 != 0
    if signed_in:
        session = served.session(fresh=case.path == "/api/auth/logout")
        token = session["refresh_token"] if case.path == "/api/auth/refresh" else session["access_token"]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    checks = METRICS_CHECKS if case.path == "/metrics" else CHECKS
    if case.path == EXPORT_PATH:
        checks = EXPORT_CHECKS_UNTIL_MEDIA_TYPES_DOCUMENTED
    response = case.call_and_validate(checks=checks, app=served.app)
    if signed_in and response.status_code in (401, 403):
        # A valid admin session is only refused when the request itself was at fault, never for being signed in.
        replaced = isinstance(case.body, dict) and bool(case.body.get("refresh_token"))
        assert case.path == "/api/auth/refresh" and replaced, response.text
    if signed_in and response.status_code < 300:
        PAST_GUARD[f"{case.method.upper()} {case.path}"] += 1


def test_every_guarded_operation_was_fuzzed_past_its_guard() -> None:
    """Runs after the fuzzing above (file order): each guarded operation answered a signed-in case."""
    if not PAST_GUARD:
        pytest.skip("the fuzzing test did not run in this session (select the whole file)")
    assert guarded_operations() - set(PAST_GUARD) == set(), dict(PAST_GUARD)
    assert {op for op in guarded_operations() if op.startswith("GET /api/audit/")}, "the audit routes are fuzzed"


async def test_metrics_is_prometheus_text_outside_the_json_schema(client: Any) -> None:
    assert "/metrics" not in DOCUMENT["paths"]
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "ladys_essence_auth_audit_events_published_total" in response.text


# ---- the answers random data seldom reaches -----------------------------------------------------


@pytest.mark.parametrize("settings", [{"pin_max_failures": 2, "register_limit": 6}], indirect=True)
async def test_known_answers_match_the_document(client: Any) -> None:
    register, login = ("POST", "/api/auth/register"), ("POST", "/api/auth/login")
    phone = new_phone()
    account = {"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "pin": GOOD_PIN}
    created = assert_documented(*register, await client.post("/api/auth/register", json=account))
    assert created["user"]["phone_number"].endswith(phone[1:])
    taken = assert_documented(*register, await client.post("/api/auth/register", json=account))
    assert taken["code"] == "phone_number_taken"
    invalid = assert_documented(*register, await client.post("/api/auth/register", json={"password": "x"}))
    assert {error["field"] for error in invalid["errors"]} >= {"name", "phone_number", "password"}

    assert assert_documented(*login, await client.post("/api/auth/login", json={"phone_number": phone}))["errors"]
    ok = assert_documented(*login, await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN}))
    assert ok["auth_method"] == "pin"
    wrong = {"phone_number": phone, "password": OTHER_PASSWORD}
    assert assert_documented(*login, await client.post("/api/auth/login", json=wrong))["code"] == "invalid_credentials"
    for _ in range(2):
        await client.post("/api/auth/login", json={"phone_number": phone, "pin": "9051"})
    locked = await client.post("/api/auth/login", json={"phone_number": phone, "pin": GOOD_PIN})
    assert locked.status_code == 403 and assert_documented(*login, locked)["code"] == "pin_locked"
    statuses = [(await client.post("/api/auth/login", json=wrong)).status_code for _ in range(3)]
    refused = await client.post("/api/auth/login", json=wrong)
    assert statuses == [401, 401, 429] and refused.status_code == 429
    assert assert_documented(*login, refused)["retry_after"] >= 1

    session = await registered(client)
    refresh = ("POST", "/api/auth/refresh")
    rotated = assert_documented(
        *refresh, await client.post("/api/auth/refresh", json={"refresh_token": session["refresh_token"]})
    )
    assert rotated["refresh_token"] != session["refresh_token"]
    kept = assert_documented(*refresh, await client.post("/api/auth/refresh", headers=bearer(rotated["refresh_token"])))
    assert "refresh_token" not in kept
    null_body = await client.post(
        "/api/auth/refresh",
        headers={**bearer(rotated["refresh_token"]), "content-type": "application/json"},
        content=b"null",
    )
    assert null_body.status_code == 200, "JSON null is the documented empty body: the header form"
    assert_documented(*refresh, await client.post("/api/auth/refresh", headers=bearer("not-a-token")))

    profile = ("PUT", "/api/auth/profile")
    headers = bearer(rotated["access_token"])
    changed = assert_documented(
        *profile,
        await client.put(
            "/api/auth/profile",
            headers=headers,
            json={"current_password": STRONG_PASSWORD, "new_password": OTHER_PASSWORD, "name": "Aline U."},
        ),
    )
    # The session that changed the password keeps its tokens; the answer hands out no new ones.
    assert changed["name"] == "Aline U." and "access_token" not in changed
    clash = await client.put("/api/auth/profile", headers=headers, json={"phone_number": phone})
    assert clash.status_code == 409 and assert_documented(*profile, clash)["code"] == "phone_number_taken"
    for method, path in (("GET", "/api/auth/profile"), ("GET", "/api/settings/account")):
        assert_documented(method, path, await client.request(method, path, headers=headers))
    assert_documented("POST", "/api/auth/logout", await client.post("/api/auth/logout", headers=headers))
    gone = assert_documented("GET", "/api/auth/profile", await client.get("/api/auth/profile", headers=headers))
    assert gone["code"] == "invalid_token"
    assert_documented("POST", "/api/auth/logout", await client.post("/api/auth/logout", headers=headers))

    too_many = None
    for _ in range(6):
        too_many = await client.post("/api/auth/register", json={"name": "x"})
        if too_many.status_code == 429:
            break
    assert too_many is not None and too_many.status_code == 429
    assert_documented(*register, too_many)
    assert assert_documented("GET", "/health", await client.get("/health"))["status"] == "healthy"


@pytest.mark.parametrize("settings", [{"redis_url": "redis://127.0.0.1:1/0"}], indirect=True)
async def test_answers_without_redis_match_the_document(client: Any) -> None:
    body = {"phone_number": new_phone(), "password": STRONG_PASSWORD}
    login = assert_documented("POST", "/api/auth/login", await client.post("/api/auth/login", json=body))
    assert login["code"] == "rate_limiter_unavailable"
    account = {"name": "Aline Uwase", **body}
    register = assert_documented("POST", "/api/auth/register", await client.post("/api/auth/register", json=account))
    assert register["code"] == "rate_limiter_unavailable"
    health = await client.get("/health")
    assert health.status_code == 503
    assert assert_documented("GET", "/health", health)["checks"]["redis"]["status"] == "error"
