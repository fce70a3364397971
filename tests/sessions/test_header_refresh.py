"""The header form of refresh answered in front of routing (app/sessions/header_refresh.py).

It must answer exactly as the route does, answer only what it can settle, and hand the rest to
the route: every other shape, a token its statement does not find, and the statement's errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.asgi import create_app, served
from app.core.settings import Settings
from app.sessions.header_refresh import NOT_FOUND_DIRECTLY, TRIED_STATE_KEY, HeaderRefresh, header_form_token
from tests.asgi import lifespan_running
from tests.conftest import from_loopback
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered


async def signed_in(client: Any) -> dict[str, Any]:
    phone = new_phone()
    await registered(client, phone_number=phone)
    response = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json())


class Recording:
    """The app behind the fast path, standing in for the route: what it was handed, and a 599."""

    def __init__(self) -> None:
        self.handed: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.handed.append(dict(scope.get("state", {})))
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def fast_path(app: Litestar) -> Any:
    """The served app, and the fast path alone over a recording app, both on ``app``'s state, in the test's loop."""
    recording = Recording()
    loopback = ("127.0.0.1", 50000)
    async with lifespan_running(app):
        served_transport = httpx.ASGITransport(app=served(app), client=loopback)
        fast_transport = httpx.ASGITransport(app=HeaderRefresh(recording, litestar=app), client=loopback)
        async with (
            httpx.AsyncClient(transport=served_transport, base_url="http://test") as client,
            httpx.AsyncClient(transport=fast_transport, base_url="http://test") as fast,
        ):
            yield client, fast, recording


async def test_the_header_form_is_answered_as_the_route_answers_it(client):
    tokens = await signed_in(client)
    fast = await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    # A body of {} is still the header form, but only the route reads bodies: this one is the route's.
    routed = await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]), json={})
    assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
    assert fast.headers["content-type"] == routed.headers["content-type"]
    fast_body, routed_body = fast.json(), routed.json()
    assert fast_body.keys() == routed_body.keys()
    assert {k: v for k, v in fast_body.items() if k != "access_token"} == {
        k: v for k, v in routed_body.items() if k != "access_token"
    }
    for access in (fast_body["access_token"], routed_body["access_token"]):
        assert (await client.get("/api/auth/profile", headers=bearer(access))).status_code == 200


async def test_a_live_session_is_answered_without_the_route(fast_path):
    client, fast, recording = fast_path
    tokens = await signed_in(client)
    answers = await asyncio.gather(
        *(fast.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [200] * 5, recording.handed
    assert recording.handed == []
    profile = await client.get("/api/auth/profile", headers=bearer(answers[0].json()["access_token"]))
    assert profile.status_code == 200


async def test_an_ended_session_goes_to_the_route_marked_not_found(fast_path):
    client, fast, recording = fast_path
    tokens = await signed_in(client)
    assert (await client.post("/api/auth/logout", headers=bearer(tokens["access_token"]))).status_code == 200
    answer = await fast.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert answer.status_code == 599
    assert recording.handed == [{TRIED_STATE_KEY: NOT_FOUND_DIRECTLY}]
    # And the route, handed that, answers as it always did.
    assert (await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json", "content-length": "2"},  # a body: only the route reads it
        {"transfer-encoding": "chunked"},
        {},  # no token
    ],
)
async def test_other_shapes_go_to_the_route_untried(fast_path, headers):
    client, fast, recording = fast_path
    tokens = await signed_in(client)
    request = fast.build_request("POST", "/api/auth/refresh", headers={**bearer(tokens["refresh_token"]), **headers})
    if not headers:
        del request.headers["authorization"]
    if "content-length" in headers:
        request.stream = httpx.ByteStream(b"{}")
    assert (await fast.send(request)).status_code == 599
    assert recording.handed == [{}]


def test_only_one_bearer_refresh_token_and_no_body_is_the_header_form():
    def scope(*headers: tuple[bytes, bytes]) -> Any:
        return {"headers": list(headers)}

    token = b"rt_abc"
    assert header_form_token(scope((b"authorization", b"Bearer " + token))) == "rt_abc"
    assert header_form_token(scope((b"authorization", b"bearer  " + token), (b"content-length", b"0"))) == "rt_abc"
    assert header_form_token(scope((b"authorization", b"Bearer " + token), (b"content-length", b"2"))) is None
    assert header_form_token(scope((b"authorization", b"Bearer " + token), (b"authorization", b"Bearer rt_x"))) is None
    assert header_form_token(scope((b"authorization", b"Basic " + token))) is None
    assert header_form_token(scope((b"authorization", b"Bearer eyJhbGciOi.x.y"))) is None  # a JWT: the route's 401


async def test_rotation_always_leaves_the_header_form_to_the_route(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, refresh_rotation="always"))
    async with AsyncTestClient(app=from_loopback(served(app)), raise_server_exceptions=False) as client:
        tokens = await signed_in(client)
        first = await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
        assert first.status_code == 200, first.text
        assert first.json()["refresh_token"] != tokens["refresh_token"]  # rotated: the route answered


async def test_the_answer_is_counted_in_the_routes_request_series(client):
    tokens = await signed_in(client)

    async def counted() -> float:
        text = (await client.get("/metrics")).text
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith("ladys_essence_auth_requests_total{")
                and 'path="/api/auth/refresh"' in line
                and 'status_code="200"' in line
            ),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = await counted()
    for _ in range(3):
        assert (await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))).status_code == 200
    assert await counted() == before + 3
