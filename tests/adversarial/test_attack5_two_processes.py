"""Attack 5: the header form of refresh (answered in front of routing) against two real
``ladys-essence serve`` processes on one Postgres and Redis: an ending, deactivation or role change
made through one is seen by the very next header refresh on the other; and request shapes that only
a real HTTP server produces (bytes past ``Content-Length: 0``, an empty chunked body, control
characters in a header) get the route's answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import jwt
import msgspec
import pytest

from app.core.settings import Settings
from tests.conftest import _truncate, plain_dsn
from tests.helpers import OTHER_PASSWORD, STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow
REFRESH = "/api/auth/refresh"


@pytest.fixture(scope="module")
def two_processes(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Settings]]:
    settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    env = {"REGISTER_LIMIT": "1000"}
    with (
        api_server(settings, tmp_path_factory.mktemp("a5one"), **env) as one,
        api_server(settings, tmp_path_factory.mktemp("a5two"), **env) as two,
    ):
        yield one, two, settings
    asyncio.run(_truncate(base_settings))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_up(base: str) -> dict[str, Any]:
    body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, "user_type": "parent"}
    answer = httpx.post(f"{base}/api/auth/register", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def login(base: str, tokens: dict[str, Any], password: str = STRONG_PASSWORD) -> dict[str, Any]:
    phone = tokens["user"]["phone_number"]
    answer = httpx.post(f"{base}/api/auth/login", json={"phone_number": phone, "password": password}, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def refresh(base: str, refresh_token: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}{REFRESH}", headers={**bearer(refresh_token), **headers}, timeout=30)


def sid(tokens: dict[str, Any]) -> str:
    return str(jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"])


async def sql(settings: Settings, statement: str, *args: object) -> Any:
    connection = await asyncpg.connect(plain_dsn(settings))
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


async def admin_of(base: str, settings: Settings) -> dict[str, str]:
    account = sign_up(base)
    await sql(settings, "UPDATE users SET role = 'admin' WHERE id = $1", account["user_id"])
    return bearer(login(base, account)["access_token"])


async def test_every_ending_on_one_process_is_refused_by_the_next_header_refresh_on_the_other(two_processes):
    one, two, settings = two_processes
    admin = await admin_of(one, settings)
    problems: list[str] = []

    def warmed() -> dict[str, Any]:
        tokens = sign_up(one)
        for base in (one, two):  # both processes have answered this token from the fast path
            assert refresh(base, tokens["refresh_token"]).status_code == 200
        return tokens

    def expect_refused(tokens: dict[str, Any], what: str) -> None:
        for base in (two, one):
            answer = refresh(base, tokens["refresh_token"])
            if answer.status_code != 401:
                problems.append(f"{what} on {base}: {answer.status_code} {answer.text[:100]}")

    tokens = warmed()
    assert httpx.post(f"{one}/api/auth/logout", headers=bearer(tokens["refresh_token"])).status_code == 200
    expect_refused(tokens, "logout")

    tokens = warmed()
    other = login(one, tokens)
    assert httpx.post(f"{one}/api/auth/logout-all", headers=bearer(other["access_token"])).status_code == 200
    expect_refused(tokens, "logout-all")
    assert refresh(two, other["refresh_token"]).status_code == 200

    tokens = warmed()
    other = login(one, tokens)
    assert (
        httpx.delete(f"{one}/api/auth/sessions/{sid(tokens)}", headers=bearer(other["access_token"])).status_code == 200
    )
    expect_refused(tokens, "end one session")

    tokens = warmed()
    other = login(one, tokens)
    changed = httpx.put(
        f"{one}/api/auth/profile",
        headers=bearer(tokens["access_token"]),
        json={"password": OTHER_PASSWORD, "current_password": STRONG_PASSWORD},
    )
    assert changed.status_code == 200, changed.text
    expect_refused(other, "password change")

    tokens = warmed()
    gone = httpx.delete(f"{one}/api/admin/users/{tokens['user_id']}/sessions/{sid(tokens)}", headers=admin)
    assert gone.status_code == 200, gone.text
    expect_refused(tokens, "admin ends a session")

    tokens = warmed()
    assert httpx.patch(f"{one}/api/admin/users/{tokens['user_id']}/toggle-status", headers=admin).status_code == 200
    expect_refused(tokens, "deactivation")

    tokens = warmed()
    assert httpx.delete(f"{one}/api/admin/users/{tokens['user_id']}", headers=admin).status_code == 200
    expect_refused(tokens, "deletion")

    assert problems == []


async def test_a_demotion_on_one_process_shows_in_the_next_header_refresh_on_the_other(two_processes):
    one, two, settings = two_processes
    admin = await admin_of(one, settings)
    tokens = sign_up(one)
    await sql(settings, "UPDATE users SET user_type = 'admin' WHERE id = $1", tokens["user_id"])  # support

    def scope_on(base: str) -> set[str]:
        answer = refresh(base, tokens["refresh_token"])
        assert answer.status_code == 200, answer.text
        return set(jwt.decode(answer.json()["access_token"], options={"verify_signature": False})["scope"].split())

    assert "panel" in scope_on(two)
    demoted = httpx.patch(
        f"{one}/api/admin/users/{tokens['user_id']}/change-role", headers=admin, json={"user_type": "parent"}
    )
    assert demoted.status_code == 200, demoted.text
    assert "panel" not in scope_on(two)


async def test_refreshes_on_one_process_racing_a_logout_on_the_other(two_processes):
    one, two, _ = two_processes
    tokens = sign_up(one)
    rt = tokens["refresh_token"]
    logged_out = asyncio.Event()
    late: list[str] = []
    before: list[str] = []
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=two, timeout=30, limits=limits) as http:

        async def refresher() -> None:
            for _ in range(15):
                started_after = logged_out.is_set()
                answer = await http.post(REFRESH, headers=bearer(rt))
                assert answer.status_code in (200, 401), answer.text
                if answer.status_code == 200:
                    (late if started_after else before).append(answer.json()["access_token"])

        async def logout() -> None:
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=one, timeout=30) as other:
                assert (await other.post("/api/auth/logout", headers=bearer(rt))).status_code == 200
            logged_out.set()

        await asyncio.gather(*(refresher() for _ in range(8)), logout())
        assert late == []
        assert before, "no refresh overlapped the logout"
        profiles = await asyncio.gather(*(http.get("/api/auth/profile", headers=bearer(a)) for a in before[-8:]))
        assert {p.status_code for p in profiles} == {401}


# ---- shapes only a real HTTP server produces ----------------------------------------------------------


def raw_exchange(base: str, request: bytes, wait: float = 1.5, then: bytes = b"") -> bytes:
    """Send ``request`` as is on one connection (and ``then`` a moment later); everything the server
    answered until it closed or went quiet."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        if then:
            time.sleep(0.3)
            sock.sendall(then)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def statuses(received: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


async def test_bytes_past_content_length_zero_are_not_a_body(two_processes):
    """``Content-Length: 0`` then a JSON body naming another token: the server answers the header form for
    the Authorization token; the trailing bytes are no body of this request (the other token is
    neither rotated nor used)."""
    one, _, settings = two_processes
    mine, theirs = sign_up(one), sign_up(one)
    body = b'{"refresh_token": "' + theirs["refresh_token"].encode() + b'"}'
    request = (
        b"POST /api/auth/refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + mine["refresh_token"].encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
    )
    # In one write: uvicorn meets the garbage "next request" before answering and closes with 400 only.
    together = raw_exchange(one, request + body)
    assert statuses(together) in ([400], [200, 400]), together[:400]
    # The body a moment later: the header form has been answered (no rotation), then the garbage refused.
    apart = raw_exchange(one, request, then=body)
    assert statuses(apart)[:1] == [200] and all(code in (400, 408) for code in statuses(apart)[1:]), apart[:600]
    first = apart.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0]
    assert b'"access_token"' in first and b'"refresh_token"' not in first
    rotated = await sql(
        settings,
        "SELECT count(*) FROM refresh_tokens WHERE session_id = $1::uuid AND rotated_at IS NOT NULL",
        sid(theirs),
    )
    assert rotated == 0


async def test_an_empty_chunked_body_is_the_header_form(two_processes):
    one, _, _ = two_processes
    mine = sign_up(one)
    request = (
        b"POST /api/auth/refresh HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
        + mine["refresh_token"].encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    received = raw_exchange(one, request)
    assert statuses(received) == [200], received[:400]
    assert b'"access_token"' in received and b'"refresh_token"' not in received


async def test_a_nul_in_a_header_never_reaches_the_batched_statement(two_processes):
    """In process, a User-Agent with NUL fails the whole batch of refreshes (see
    test_attack5_header_refresh): the real server's HTTP parser must refuse such a request before the app,
    so other clients' concurrent refreshes are untouched."""
    one, _, _ = two_processes
    victim, attacker = sign_up(one), sign_up(one)
    hostile = (
        b"POST /api/auth/refresh HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: evil\x00agent\r\n"
        b"Authorization: Bearer " + attacker["refresh_token"].encode() + b"\r\n\r\n"
    )

    async def hostile_request() -> list[int]:
        return statuses(await asyncio.to_thread(raw_exchange, one, hostile, 1.0))

    async with httpx.AsyncClient(base_url=one, timeout=30) as http:
        results = await asyncio.gather(
            *(hostile_request() for _ in range(4)),
            *(http.post(REFRESH, headers=bearer(victim["refresh_token"])) for _ in range(8)),
        )
    for codes in results[:4]:
        assert codes in ([400], []), codes  # refused by the parser (or the connection closed)
    assert [r.status_code for r in results[4:]] == [200] * 8


async def test_forwarded_for_from_an_untrusted_peer_on_a_real_server(two_processes):
    one, _, settings = two_processes
    tokens = sign_up(one)
    await sql(settings, "UPDATE sessions SET last_used_at = now() - interval '1 hour' WHERE id = $1::uuid", sid(tokens))
    answer = refresh(
        one, tokens["refresh_token"], **{"X-Forwarded-For": "198.51.100.9", "Forwarded": "for=198.51.100.10"}
    )
    assert answer.status_code == 200, answer.text
    assert await sql(settings, "SELECT host(last_ip) FROM sessions WHERE id = $1::uuid", sid(tokens)) == "127.0.0.1"
