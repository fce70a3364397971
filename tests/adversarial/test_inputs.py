"""Hostile inputs: oversized and deeply nested bodies, wrong types, unicode, NUL bytes, phone numbers of
every shape, ten thousand clients, and every form of X-Forwarded-For. Never a 500; every refusal is the
service's JSON error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar, get
from litestar.params import QueryParameter

from app.asgi import create_app
from app.core.errors import InvalidCredentials
from app.core.http import send_error
from app.core.phones import PhoneNumberError, normalise_phone
from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from app.login.attempt import LoginAttempt
from app.login.gate import ATTEMPT_STATE_KEY, LoginGate
from app.ratelimit.client_ip import ClientResolver
from tests.asgi import lifespan_running
from tests.helpers import STRONG_PASSWORD, bearer, e164, new_phone, registered

BODY_ROUTES = [
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("PUT", "/api/auth/profile"),
    ("PUT", "/api/settings/account"),
    ("PUT", "/api/settings/privacy"),
    ("PUT", "/api/settings/privacy/parent-access"),
    ("POST", "/api/auth/recovery/start"),
    ("POST", "/api/auth/recovery/complete"),
    ("POST", "/api/auth/phone/verify/confirm"),
]
ROOMY = {"register_limit": 100_000, "rate_limit_login_failures": 100_000, "account_max_failures": 100_000}
PROXIED = {"trusted_proxies": ["127.0.0.1/32"], **ROOMY}
E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def json_error(response: Any, *statuses: int) -> dict[str, Any]:
    """A refusal as the service words it: JSON with a message and a code, nothing from a driver."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("message"), str) and body["message"]
    assert isinstance(body.get("code"), str) and body["code"]
    assert "Traceback" not in response.text and "asyncpg" not in response.text and "detail" not in body
    return body


SIGNED_IN_POSTS = ("/api/auth/phone/verify/",)


async def send(client: Any, method: str, path: str, token: str, **kwargs: Any) -> Any:
    """PUT routes (and the signed-in POSTs) signed in, so that the body is what gets judged; other POSTs
    as a stranger."""
    signed_in = method == "PUT" or path.startswith(SIGNED_IN_POSTS)
    headers = {**kwargs.pop("headers", {}), **(bearer(token) if signed_in else {})}
    return await client.request(method, path, headers=headers, **kwargs)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Any, method: str, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> Answer:
    """One request straight into the ASGI app, from 127.0.0.1, the body in ``chunks`` (no Content-Length).

    Litestar's AsyncTestClient hands every request to a portal thread and waits for it, so requests it
    sends never overlap and cannot stream a body; this runs in the test's own event loop.
    """
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }  # fmt: skip
    pending = list(chunks)
    answered = asyncio.Event()
    answer = Answer(0, {}, b"")

    async def receive() -> dict[str, Any]:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {name.decode(): value.decode() for name, value in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                answered.set()

    await app(scope, receive, send)
    return answer


@pytest.fixture
async def served(app: Litestar) -> AsyncIterator[Any]:
    """The app as served (login gate in front), its lifespan run in the test's event loop."""
    async with lifespan_running(app):
        yield LoginGate(app, litestar=app)


@pytest.fixture
async def token(client: Any) -> str:
    access: str = (await registered(client))["access_token"]
    return access


# ---- size and depth ---------------------------------------------------------------------------


def test_every_body_route_is_covered(settings: Settings) -> None:
    """New POST/PUT routes join these tests (the security team's audit API; the service-only
    introspection, token (tests/platform/test_standards.py) and USSD routes, which refuse a user's
    token first; the admin panel's routes and
    logout-all and phone/verify/start, which take no body and need a signed-in token: these are tested
    with their own, tests/admin/test_admin_inputs.py for the admin panel's)."""
    paths = create_app(settings).openapi_schema.to_schema()["paths"]
    documented = {
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in ("post", "put", "patch")
        and not path.startswith(("/api/audit", "/api/ussd/", "/api/admin/"))
        and path not in ("/api/auth/introspect", "/api/auth/logout-all", "/api/auth/phone/verify/start", "/oauth/token")
    }
    assert documented == set(BODY_ROUTES)


def sized_login_body(size: int) -> bytes:
    """A login body of exactly ``size`` bytes, the password taking up the slack."""
    phone = new_phone()
    empty = len(f'{{"phone_number": "{phone}", "password": ""}}')
    raw = f'{{"phone_number": "{phone}", "password": "{"x" * (size - empty)}"}}'.encode()
    assert len(raw) == size
    return raw


async def test_oversized_bodies_are_413_json_on_every_body_route(
    client: Any, settings: Settings, token: str, subtests: pytest.Subtests
) -> None:
    limit = settings.max_body_bytes
    json_type = {"content-type": "application/json"}
    for method, path in BODY_ROUTES:
        with subtests.test(route=f"{method} {path}"):
            at_limit = await send(client, method, path, token, content=sized_login_body(limit), headers=json_type)
            assert at_limit.status_code < 500 and at_limit.status_code != 413, at_limit.text
            over = await send(client, method, path, token, content=sized_login_body(limit + 1), headers=json_type)
            assert json_error(over, 413)["code"] == "payload_too_large"


async def test_oversized_streamed_bodies_are_413_json_on_every_body_route(
    served: Any, settings: Settings, subtests: pytest.Subtests
) -> None:
    """No Content-Length: the limit must hold while the body streams in, 4 KiB at a time."""
    json_type = (b"content-type", b"application/json")
    account = json.dumps({"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD})
    created = await call(served, "POST", "/api/auth/register", [account.encode()], [json_type])
    assert created.status == 201, created.body
    signed_in = (b"authorization", f"Bearer {created.json()['access_token']}".encode())
    body = sized_login_body(4 * settings.max_body_bytes)
    chunks = [body[start : start + 4096] for start in range(0, len(body), 4096)]
    for method, path in BODY_ROUTES:
        with subtests.test(route=f"{method} {path}"):
            answer = await call(served, method, path, chunks, [json_type, signed_in])
            assert answer.status == 413, answer.body[:300]
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json()["code"] == "payload_too_large" and answer.json()["message"]


NESTED = {
    "arrays": "[" * 8000 + "]" * 8000,
    "objects": '{"a":' * 2600 + "1" + "}" * 2600,
    "in-a-field": '{"phone_number": "0788123456", "password": ' + "[" * 7000 + "]" * 7000 + "}",
    "mixed": '[{"a":' * 1300 + "null" + "}]" * 1300,
}


async def test_deeply_nested_json_is_400_json_on_every_body_route(
    client: Any, token: str, subtests: pytest.Subtests
) -> None:
    for method, path in BODY_ROUTES:
        for shape, text in NESTED.items():
            with subtests.test(route=f"{method} {path}", shape=shape):
                response = await send(
                    client, method, path, token, content=text.encode(), headers={"content-type": "application/json"}
                )
                json_error(response, 400)


async def test_deeply_nested_preferences_are_stored_or_refused_cleanly(client: Any, token: str) -> None:
    """A free-form JSON field, nested as deep as the size limit allows, on its way into jsonb."""
    for depth in (100, 1000, 2500):
        text = '{"notification_preferences": ' + '{"a":' * depth + "true" + "}" * depth + "}"
        response = await send(
            client,
            "PUT",
            "/api/auth/profile",
            token,
            content=text.encode(),
            headers={"content-type": "application/json"},
        )
        if response.status_code != 200:
            json_error(response, 400)


# ---- wrong types ------------------------------------------------------------------------------

TEXT_WRONG = [12345, 1.5, True, [], {"$ne": ""}]
PIN_WRONG = [48.27, True, [], {"$gt": ""}]
# Litestar reads bodies leniently ("28" is 28, "true" and 1 are true): these no reading accepts.
INT_WRONG = ["twenty-eight", 28.5, True, [], {}]
BOOL_WRONG = ["maybe", 2, 0.5, [], {}]
REGISTER_FIELDS = {
    **dict.fromkeys(
        ["name", "first_name", "last_name", "phone_number", "password", "user_type", "email", "date_of_birth"],
        TEXT_WRONG,
    ),
    "pin": PIN_WRONG,
}
LOGIN_FIELDS = {"phone_number": TEXT_WRONG, "password": TEXT_WRONG, "pin": PIN_WRONG}
PROFILE_FIELDS = {
    **dict.fromkeys(
        [
            "name", "first_name", "last_name", "email", "phone_number", "phone", "date_of_birth",
            "current_password", "new_password", "password",
        ],
        TEXT_WRONG,
    ),
    **dict.fromkeys(["personal_cycle_length", "personal_period_length", "session_timeout_minutes"], INT_WRONG),
    **dict.fromkeys(
        ["has_provided_cycle_info", "enable_pin_auth", "allow_parent_access", "data_sharing_consent"], BOOL_WRONG
    ),
    "notification_preferences": [[], "on", 1, True],
    "new_pin": PIN_WRONG,
    "pin": PIN_WRONG,
}  # fmt: skip
PRIVACY_FIELDS = {"data_sharing_consent": BOOL_WRONG, "notification_preferences": [[], "on", 1, True]}
PARENT_ACCESS_FIELDS = {"allow_parent_access": [*BOOL_WRONG, None]}


@pytest.mark.parametrize("settings", [ROOMY], indirect=True)
async def test_wrong_types_are_400_naming_the_field(client: Any, token: str, subtests: pytest.Subtests) -> None:
    valid = {
        "/api/auth/register": {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD},
        "/api/auth/login": {"phone_number": new_phone(), "password": STRONG_PASSWORD},
        "/api/auth/profile": {},
        "/api/settings/account": {},
        "/api/settings/privacy": {},
        "/api/settings/privacy/parent-access": {},
    }
    cases = [
        ("POST", "/api/auth/register", REGISTER_FIELDS),
        ("POST", "/api/auth/login", LOGIN_FIELDS),
        ("PUT", "/api/auth/profile", PROFILE_FIELDS),
        ("PUT", "/api/settings/account", PROFILE_FIELDS),
        ("PUT", "/api/settings/privacy", PRIVACY_FIELDS),
        ("PUT", "/api/settings/privacy/parent-access", PARENT_ACCESS_FIELDS),
    ]
    for method, path, fields in cases:
        for field, values in fields.items():
            for value in values:
                with subtests.test(route=f"{method} {path}", field=field, value=value):
                    body = {**valid[path], field: value}
                    response = await send(client, method, path, token, json=body)
                    error = json_error(response, 400)
                    assert error["code"] == "validation_error"
                    assert [item["field"] for item in error["errors"]] == [field]
    for method, path in (("POST", "/api/auth/refresh"), ("POST", "/api/auth/logout")):
        for value in TEXT_WRONG:
            with subtests.test(route=f"{method} {path}", field="refresh_token", value=value):
                response = await client.post(path, json={"refresh_token": value})
                assert json_error(response, 400)["errors"][0]["field"] == "refresh_token"


# ---- unicode ----------------------------------------------------------------------------------

NAMES = [
    "أمينة الحسن",  # Arabic, right to left
    "שרה כהן",  # Hebrew
    "مریم\u200cزاده رضایی",  # Persian with a zero-width non-joiner  # noqa: RUF001
    "\u200fأمينة\u200f Uwase",  # right-to-left marks around mixed scripts
    "ኣበበ ከበደ",  # Ge'ez
    "Zoe\u0308 Mukamana",  # combining diaeresis, kept as sent (not normalised)
    "Amélie Ñúñez-Øster",
    "张伟 王",
    "Aline 🌸 Uwase",
    "👩\u200d👩\u200d👧 🇷🇼",  # zero-width-joiner family and a flag
    "𝔄𝔩𝔦𝔫𝔢 𝔘𝔴𝔞𝔰𝔢",  # astral plane letters  # noqa: RUF001
    "ஆதிரை தமிழ்",
]


@pytest.mark.parametrize("settings", [ROOMY], indirect=True)
async def test_unicode_names_round_trip_through_register_login_and_profile(
    client: Any, db: Any, subtests: pytest.Subtests
) -> None:
    for name in NAMES:
        with subtests.test(name=name):
            phone = new_phone()
            created = await registered(client, name=name, phone_number=phone)
            assert created["user"]["name"] == name
            assert await db.fetchval("SELECT name FROM users WHERE phone_number = $1", e164(phone)) == name
            login = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
            assert login.json()["user"]["name"] == name
            headers = bearer(login.json()["access_token"])
            profile = (await client.get("/api/auth/profile", headers=headers)).json()
            first, _, last = name.partition(" ")
            assert (profile["name"], profile["first_name"], profile["last_name"]) == (name, first, last)
            renamed = name[::-1].strip()  # reversed: still the same characters, another string
            updated = await client.put("/api/settings/account", headers=headers, json={"name": renamed})
            assert updated.status_code == 200, updated.text
            assert (await client.get("/api/auth/profile", headers=headers)).json()["name"] == " ".join(renamed.split())


async def test_name_length_counts_characters_not_bytes(client: Any) -> None:
    assert (await registered(client, name="🌸" * 200))["user"]["name"] == "🌸" * 200
    refused = await client.post(
        "/api/auth/register",
        json={"name": "🌸" * 201, "phone_number": new_phone(), "password": STRONG_PASSWORD},
    )
    assert json_error(refused, 400)["errors"][0]["field"] == "name"


@pytest.mark.parametrize("control", ["\x1b[31m", "\x7f", "\x9b31m", "\x07"])
async def test_control_characters_in_names_are_refused(client: Any, token: str, control: str) -> None:
    response = await client.post(
        "/api/auth/register",
        json={"name": f"Aline{control} Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD},
    )
    assert json_error(response, 400)["errors"][0]["field"] == "name"
    response = await client.put("/api/auth/profile", headers=bearer(token), json={"name": f"Aline{control}"})
    assert json_error(response, 400)["errors"][0]["field"] == "name"


# ---- NUL bytes --------------------------------------------------------------------------------

NUL_REGISTER = {
    "name": "Aline\x00 Uwase",
    "first_name": "\x00",
    "last_name": "Uwase\x00",
    "phone_number": "0788\x00123456",
    "password": "Umuganda\x00-Kigali-42",
    "user_type": "parent\x00",
    "pin": "48\x0027",
    "email": "aline\x00@example.com",
    "date_of_birth": "2000-01-01\x00",
}
NUL_PROFILE = {
    **{key: value for key, value in NUL_REGISTER.items() if key not in ("user_type", "password")},
    "phone": "0788\x00123456",
    "current_password": "\x00",
    "new_password": "Ibiyaga\x00-Bigari-2025",
    "password": "Ibiyaga-Bigari-2025\x00",
    "new_pin": "\x004827",
    "notification_preferences": {"sms\x00": True, "email": "da\x00ily", "nested": [{"x": "\x00"}]},
}


def assert_clean(response: Any, allowed: tuple[int, ...]) -> None:
    if response.status_code < 400:
        assert response.status_code in allowed, response.text
        assert "\\u0000" not in response.text
    else:
        json_error(response, 400, 401)


@pytest.mark.parametrize("settings", [ROOMY], indirect=True)
async def test_nul_bytes_in_every_string_field_are_refused_or_handled_cleanly(
    client: Any, token: str, subtests: pytest.Subtests
) -> None:
    for field, value in NUL_REGISTER.items():
        with subtests.test(route="register", field=field):
            body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, field: value}
            assert_clean(await client.post("/api/auth/register", json=body), (201,))
    for field, value in {"phone_number": "0788\x00123456", "password": "\x00", "pin": "48\x0027"}.items():
        with subtests.test(route="login", field=field):
            body = {"phone_number": new_phone(), field: value}
            if field == "phone_number":
                body["password"] = STRONG_PASSWORD
            assert_clean(await client.post("/api/auth/login", json=body), ())
    for field, value in NUL_PROFILE.items():
        with subtests.test(route="profile", field=field):
            assert_clean(await client.put("/api/auth/profile", headers=bearer(token), json={field: value}), (200,))
    for path in ("/api/auth/refresh", "/api/auth/logout"):
        with subtests.test(route=path):
            assert_clean(await client.post(path, json={"refresh_token": "eyJ\x00.e30.x"}), ())
    profile = (await client.get("/api/auth/profile", headers=bearer(token))).json()
    assert profile["name"] == "Aline Uwase"


# ---- phone numbers of every shape --------------------------------------------------------------

ARABIC_INDIC = "".join(chr(0x0660 + int(digit)) for digit in "0788123456")
FULL_WIDTH = "".join(chr(0xFF10 + int(digit)) for digit in "0788123456")
PHONE_SHAPES = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.from_regex(r"\A[+0]?[0-9 ().\-]{0,30}\Z"),
    st.builds(
        lambda prefix, digits, sep: prefix + sep.join(digits[i : i + 3] for i in range(0, len(digits), 3)),
        st.sampled_from(["", "+", "+250", "250", "00250", "0", "+1", "+44", "tel:", "+250 (0)"]),
        st.text("0123456789", min_size=0, max_size=16),
        st.sampled_from(["", " ", "-", ".", "\u00a0", "\u2011"]),
    ),
    st.sampled_from(
        [
            ARABIC_INDIC,
            FULL_WIDTH,
            "0788 CALL ME",
            "+250788123456;ext=12",
            "+250 788 123 456 x99",
            "+" + "9" * 40,
            "0" * 33,
            "+250788123456\u202e",
            "+250\u200b788123456",
        ]
    ),
)


@pytest.mark.parametrize("settings", [ROOMY], indirect=True)
@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=PHONE_SHAPES)
async def test_phone_numbers_of_every_shape(client: Any, settings: Settings, raw: str) -> None:
    """Login: 400 naming the field, or the one 401. Register: 400, or an E.164 account that signs in as typed."""
    login = await client.post("/api/auth/login", json={"phone_number": raw, "password": "Wrong-Password-77"})
    body = json_error(login, 400, 401)
    if login.status_code == 400:
        assert body["errors"][0]["field"] == "phone_number"
    else:
        assert body["code"] == "invalid_credentials"

    account = {"name": "Aline Uwase", "phone_number": raw, "password": STRONG_PASSWORD}
    register = await client.post("/api/auth/register", json=account)
    if register.status_code != 201:
        refusal = json_error(register, 400, 409)
        assert refusal["errors"][0]["field"] == "phone_number" if register.status_code == 400 else refusal["code"]
        return
    stored = register.json()["user"]["phone_number"]
    assert E164.fullmatch(stored)
    assert stored == normalise_phone(raw, settings.default_phone_region)
    again = await client.post("/api/auth/login", json={"phone_number": raw, "password": STRONG_PASSWORD})
    assert again.status_code == 200 and again.json()["user"]["phone_number"] == stored


async def test_equivalent_shapes_reach_one_account(client: Any) -> None:
    await registered(client, phone_number="0788123456")
    for typed in (ARABIC_INDIC, FULL_WIDTH, "+250 (0)788 123 456", "00250788123456", "+250-788-123-456"):
        try:
            normalise_phone(typed, "RW", strict=False)
        except PhoneNumberError:
            pytest.fail(f"{typed!r} does not parse")
        response = await client.post("/api/auth/login", json={"phone_number": typed, "password": STRONG_PASSWORD})
        assert response.status_code == 200, (typed, response.text)
        assert response.json()["user"]["phone_number"] == "+250788123456"


# ---- many clients, and every form of X-Forwarded-For --------------------------------------------


def client_address(index: int) -> str:
    """Distinct clients: IPv4 from 10.0.0.1 up, and every tenth an IPv6 host in its own /64."""
    if index % 10 == 0:
        return f"2001:db8:{index >> 16:x}:{index & 0xFFFF:x}::{index % 7 + 1}"
    return str(ipaddress.IPv4Address(0x0A000000 + index))


# The argon2 cost is not under test here (test_enumeration times it); the audit writer's Postgres
# batches and the access log's line per request would only compete for the CPU.
MANY_CLIENTS = {**PROXIED, "argon2_memory_kib": 8, "audit_writer_enabled": False, "access_log": False}
CLIENTS = 10_000  # the count is the claim: the limiter keys every client apart, and none is limited, at scale
THROUGH_THE_WHOLE_APP = 1_000  # of them (100 over IPv6); the others skip the user lookup and the hash


async def fail_with_an_unknown_number(scope: Any, receive: Any, send: Any) -> None:
    """What the login handler does for a number with no account, without the lookup and the hash.

    Behind the real gate, which has taken the client's budget and left its attempt in the scope: the
    per-number reservation, the failure settled with its audit event, and the one 401.
    """
    attempt: LoginAttempt = scope["state"][ATTEMPT_STATE_KEY]
    assert attempt.method == "password" and attempt.phone_number.startswith("+250")
    await attempt.reserve_account()
    await attempt.finish(success=False, reason="unknown_account")
    await send_error(send, InvalidCredentials(headers=attempt.headers()), {})


@pytest.mark.slow
@pytest.mark.parametrize("settings", [MANY_CLIENTS], indirect=True)
async def test_ten_thousand_clients_each_failing_once_are_never_limited(
    served: Any, app: Litestar, settings: Settings
) -> None:
    """Ten thousand distinct clients (every tenth an IPv6 /64 of its own), one wrong sign-in each, through
    one process: not one is refused, and Redis holds exactly one failure for each, expiring with the window.

    Every request goes through the login gate, which resolves the client from X-Forwarded-For and takes
    its budget. The first thousand then go through the whole app (user lookup, hash, handler); the other
    nine thousand through :func:`fail_with_an_unknown_number`, the handler's own calls on the attempt
    without the Postgres lookup and the hash: those were three quarters of a two-minute test, and the
    claim is about the limiter's budgets and keys, which every one of the ten thousand exercises.
    """
    in_flight = 8  # within the database pool (10): more only queues and churns connections
    statuses: dict[int, int] = {}
    gate_only = LoginGate(fail_with_an_unknown_number, litestar=app)

    async def fail_once(index: int) -> None:
        body = json.dumps({"phone_number": new_phone(), "password": STRONG_PASSWORD}).encode()
        forwarded = f"198.51.100.200, {client_address(index)}".encode()
        headers = [(b"content-type", b"application/json"), (b"x-forwarded-for", forwarded)]
        target = served if index <= THROUGH_THE_WHOLE_APP else gate_only
        answer = await call(target, "POST", "/api/auth/login", [body], headers)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1

    indexes = iter(range(1, CLIENTS + 1))

    async def client_after_client() -> None:  # ``in_flight`` of these keep the server busy, none waits for a batch
        for index in indexes:
            await fail_once(index)

    await asyncio.gather(*(client_after_client() for _ in range(in_flight)))
    assert statuses == {401: CLIENTS}

    resolver = ClientResolver(settings.trusted_proxies, settings.rate_limit_ipv6_prefix)
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    expected = {
        keys.client(resolver.client_key(ipaddress.ip_address(client_address(index))), "login")
        for index in range(1, CLIENTS + 1)
    }
    assert len(expected) == CLIENTS
    assert settings.redis_url
    store = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        found = {key async for key in store.scan_iter(match=f"{settings.redis_key_prefix}*:c:login:*", count=1000)}
        assert found == expected
        async with store.pipeline(transaction=False) as pipe:
            for key in sorted(found):
                pipe.pttl(key)
                pipe.zcard(key)
            replies = await pipe.execute()
    finally:
        await store.aclose()
    ttls, sizes = replies[::2], replies[1::2]
    window_ms = (settings.rate_limit_login_window_seconds + settings.rate_limit_reservation_seconds) * 1000
    assert all(0 < ttl <= window_ms for ttl in ttls), sorted(ttls)[:5]
    assert set(sizes) == {1}  # one failure each, and nothing else


FORWARDED_FORMS: list[tuple[list[tuple[str, str | bytes]], str | None]] = [
    ([("X-Forwarded-For", "203.0.113.7")], "203.0.113.7"),
    ([("X-Forwarded-For", "   203.0.113.7   ")], "203.0.113.7"),
    ([("X-Forwarded-For", "198.51.100.1,203.0.113.8")], "203.0.113.8"),
    ([("X-Forwarded-For", "198.51.100.1 ,  203.0.113.9 , 127.0.0.1")], "203.0.113.9"),
    ([("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.10")], "203.0.113.10"),
    ([("x-forwarded-for", "203.0.113.11"), ("X-FORWARDED-FOR", "127.0.0.1")], "203.0.113.11"),
    ([("X-Forwarded-For", "203.0.113.12:4711")], "203.0.113.12"),
    ([("X-Forwarded-For", "[2001:db8:1:2::3]:443")], "2001:db8:1:2::/64"),
    ([("X-Forwarded-For", "2001:db8:1:3::3")], "2001:db8:1:3::/64"),
    ([("X-Forwarded-For", '"[2001:db8:1:4::3]"')], "2001:db8:1:4::/64"),
    ([("X-Forwarded-For", "fe80::1%eth0")], "fe80::/64"),
    ([("X-Forwarded-For", "::ffff:203.0.113.13")], "203.0.113.13"),
    ([("X-Forwarded-For", "unknown, 203.0.113.14")], "203.0.113.14"),
    ([("X-Forwarded-For", "203.0.113.15, garbage")], "127.0.0.1"),
    ([("X-Forwarded-For", "garbage")], "127.0.0.1"),
    ([("X-Forwarded-For", "")], "127.0.0.1"),
    ([("X-Forwarded-For", ",,,")], "127.0.0.1"),
    ([("X-Forwarded-For", "[2001:db8::1")], "127.0.0.1"),
    ([("X-Forwarded-For", "[2001:db8::1]:port")], "127.0.0.1"),
    ([("X-Forwarded-For", "203.0.113.16:")], "127.0.0.1"),
    ([("X-Forwarded-For", "300.1.2.3")], "127.0.0.1"),
    ([("X-Forwarded-For", "203.0.113.17/24")], "127.0.0.1"),
    ([("X-Forwarded-For", b"\xff\xfe\x00\x01, 203.0.113.18")], "203.0.113.18"),
    ([("X-Forwarded-For", "1.1.1.1," * 2000 + "203.0.113.19")], "203.0.113.19"),
    ([("X-Forwarded-For", "a" * 10_000)], "127.0.0.1"),
    ([("Forwarded", "for=203.0.113.20;proto=https")], "127.0.0.1"),  # not the configured header
    ([("Forwarded", 'for="[2001:db8::1"; by=\x7f')], "127.0.0.1"),
    ([("X-Real-IP", "203.0.113.21")], "127.0.0.1"),
]


@pytest.mark.parametrize("settings", [PROXIED], indirect=True)
async def test_forwarded_for_forms_never_500_and_key_the_right_client(
    client: Any, settings: Settings, subtests: pytest.Subtests
) -> None:
    keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
    assert settings.redis_url
    store = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        for headers, expected in FORWARDED_FORMS:
            with subtests.test(headers=repr(headers)[:80]):
                await store.delete(keys.client(str(expected), "login"))
                body = {"phone_number": new_phone(), "password": STRONG_PASSWORD}
                response = await client.post("/api/auth/login", json=body, headers=headers)
                assert json_error(response, 401)["code"] == "invalid_credentials"
                assert await store.zcard(keys.client(str(expected), "login")) == 1
                register = await client.post("/api/auth/register", json={"name": "x"}, headers=headers)
                json_error(register, 400)
    finally:
        await store.aclose()


# ---- database errors wear the service's error shape ---------------------------------------------


async def test_database_errors_do_not_leak_driver_messages(settings: Settings) -> None:
    """advanced-alchemy wraps driver errors; its default handler would answer with the driver's text."""
    from advanced_alchemy.exceptions import DuplicateKeyError, IntegrityError, NotFoundError
    from litestar.testing import AsyncTestClient

    secret = 'duplicate key value violates unique constraint "users_phone_number_key" (+250788123456)'
    raised = {
        "duplicate": DuplicateKeyError(detail=secret),
        "integrity": IntegrityError(detail=secret),
        "missing": NotFoundError(detail=secret),
    }

    @get("/boom", include_in_schema=False)
    async def boom(kind: Annotated[str, QueryParameter()]) -> None:
        raise raised[kind]

    app = create_app(settings)
    app.register(boom)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        for kind, status in (("duplicate", 409), ("integrity", 500), ("missing", 404)):
            response = await test_client.get("/boom", params={"kind": kind})
            assert response.status_code == status
            assert "+250788123456" not in response.text and "constraint" not in response.text
            assert set(response.json()) == {"message", "code"}


async def test_routes_that_take_no_body_still_refuse_an_oversized_one(
    client: Any, token: str, settings: Settings
) -> None:
    """logout-all and phone/verify/start read no body, yet a body over MAX_BODY_BYTES is the usual 413."""
    oversized = b'{"x": "' + b"a" * (2 * settings.max_body_bytes) + b'"}'
    for path in ("/api/auth/logout-all", "/api/auth/phone/verify/start"):
        response = await client.post(
            path, content=oversized, headers={**bearer(token), "content-type": "application/json"}
        )
        assert json_error(response, 413)["code"] == "payload_too_large", path
