"""Attack 5: the header form of refresh answered in front of routing (app/sessions/header_refresh.py).

Every test here drives the app in the test's own event loop (tests/asgi.py), so requests overlap
and are batched into one statement as in production. Where an answer is compared with "the route's",
the same request goes through the app as it was served before the fast path existed (CORS, the login
gate, Litestar: ``served()`` without ``HeaderRefresh``), on the same app and lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar

from app.asgi import create_app, served
from app.core.cors import CorsMiddleware
from app.core.settings import Settings
from app.login.gate import LoginGate
from tests.asgi import lifespan_running
from tests.audit.history.support import staff_token
from tests.helpers import OTHER_PASSWORD, STRONG_PASSWORD, bearer, new_phone, registered

REFRESH = "/api/auth/refresh"
PROFILE = "/api/auth/profile"
LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Many accounts from one address: a registration budget that does not get in the way; and the
    test's own overrides (``indirect`` parametrisation)."""
    overrides = getattr(request, "param", {}) or {}
    return msgspec.structs.replace(settings, register_limit=10_000, **overrides)


@contextlib.asynccontextmanager
async def both_stacks(app: Litestar, client: tuple[str, int] = LOOPBACK) -> AsyncIterator[tuple[Any, Any]]:
    """(as served now, with the fast path; as served before it: the route answers every refresh)."""
    route_only = CorsMiddleware(LoginGate(app, litestar=app), app.state.cors_policy)
    async with lifespan_running(app):
        fast_transport = httpx.ASGITransport(app=served(app), client=client)
        route_transport = httpx.ASGITransport(app=route_only, client=client)
        async with (
            httpx.AsyncClient(transport=fast_transport, base_url="http://testserver", timeout=60) as fast,
            httpx.AsyncClient(transport=route_transport, base_url="http://testserver", timeout=60) as route,
        ):
            yield fast, route


async def login(http: Any, phone: str, password: str = STRONG_PASSWORD) -> dict[str, Any]:
    response = await http.post("/api/auth/login", json={"phone_number": phone, "password": password})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def account(http: Any) -> tuple[str, dict[str, Any]]:
    phone = new_phone()
    tokens = await registered(http, phone_number=phone)
    return phone, tokens


def claims(access: str) -> dict[str, Any]:
    return dict(jwt.decode(access, options={"verify_signature": False}))


async def header_refresh(http: Any, refresh_token: str, **headers: str) -> httpx.Response:
    return await http.post(REFRESH, headers={**bearer(refresh_token), **headers})


# ---- revocation is immediate ----------------------------------------------------------------------


async def test_every_ending_is_401_on_the_very_next_header_refresh(app, db):
    """Each way a session ends, the token warmed by a fast-path 200 just before; then at once a header
    refresh (the fast path's statement) and, for good measure, several in one batch."""
    async with both_stacks(app) as (http, _):
        admin_token, _ = await staff_token(http, db, "admin")
        admin = bearer(admin_token)

        async def warmed() -> tuple[str, dict[str, Any], str]:
            phone, tokens = await account(http)
            answer = await header_refresh(http, tokens["refresh_token"])
            assert answer.status_code == 200, answer.text
            return phone, tokens, claims(tokens["access_token"])["sid"]

        async def refused(refresh_token: str, what: str) -> None:
            answers = await asyncio.gather(*(header_refresh(http, refresh_token) for _ in range(4)))
            assert [a.status_code for a in answers] == [401] * 4, (what, [a.text for a in answers])

        # logout with the refresh token, and with the access token
        _, tokens, _ = await warmed()
        assert (await http.post("/api/auth/logout", headers=bearer(tokens["refresh_token"]))).status_code == 200
        await refused(tokens["refresh_token"], "logout (refresh token)")
        _, tokens, _ = await warmed()
        assert (await http.post("/api/auth/logout", headers=bearer(tokens["access_token"]))).status_code == 200
        await refused(tokens["refresh_token"], "logout (access token)")

        # logout-all from another session: the other one ends, this one keeps going
        phone, tokens, _ = await warmed()
        other = await login(http, phone)
        assert (await header_refresh(http, other["refresh_token"])).status_code == 200
        ended = await http.post("/api/auth/logout-all", headers=bearer(other["access_token"]))
        assert ended.status_code == 200, ended.text
        await refused(tokens["refresh_token"], "logout-all")
        assert (await header_refresh(http, other["refresh_token"])).status_code == 200

        # ending one device
        phone, tokens, sid = await warmed()
        other = await login(http, phone)
        gone = await http.delete(f"/api/auth/sessions/{sid}", headers=bearer(other["access_token"]))
        assert gone.status_code == 200, gone.text
        await refused(tokens["refresh_token"], "end one session")

        # password change ends every other session
        phone, tokens, _ = await warmed()
        other = await login(http, phone)
        assert (await header_refresh(http, other["refresh_token"])).status_code == 200
        changed = await http.put(
            PROFILE,
            headers=bearer(tokens["access_token"]),
            json={"password": OTHER_PASSWORD, "current_password": STRONG_PASSWORD},
        )
        assert changed.status_code == 200, changed.text
        await refused(other["refresh_token"], "password change")

        # an admin ends one session
        _, tokens, sid = await warmed()
        gone = await http.delete(f"/api/admin/users/{tokens['user_id']}/sessions/{sid}", headers=admin)
        assert gone.status_code == 200, gone.text
        await refused(tokens["refresh_token"], "admin ends a session")

        # deactivation by an admin
        _, tokens, _ = await warmed()
        toggled = await http.patch(f"/api/admin/users/{tokens['user_id']}/toggle-status", headers=admin)
        assert toggled.status_code == 200, toggled.text
        await refused(tokens["refresh_token"], "deactivation")

        # deactivation behind the service's back (only is_active changes: no session is ended)
        _, tokens, _ = await warmed()
        await db.execute("UPDATE users SET is_active = false WHERE id = $1", tokens["user_id"])
        await refused(tokens["refresh_token"], "is_active = false by SQL")

        # account deletion
        _, tokens, _ = await warmed()
        deleted = await http.delete(f"/api/admin/users/{tokens['user_id']}", headers=admin)
        assert deleted.status_code == 200, deleted.text
        await refused(tokens["refresh_token"], "deletion")

        # self-service recovery code issued by an admin (ends every session)
        _, tokens, _ = await warmed()
        recovered = await http.post(f"/api/admin/users/{tokens['user_id']}/recovery", headers=admin)
        assert recovered.status_code == 200, recovered.text
        await refused(tokens["refresh_token"], "admin recovery")

        # the session's own expiry, and the token's
        _, tokens, sid = await warmed()
        await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", sid)
        await refused(tokens["refresh_token"], "session expired")
        _, tokens, sid = await warmed()
        await db.execute(
            "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE session_id = $1::uuid", sid
        )
        await refused(tokens["refresh_token"], "refresh token expired")


async def test_a_role_change_shows_in_the_next_header_refreshed_token(app, db):
    """Demotion by an admin through the panel (Flask-era user type), and role changes in the database:
    the next header-form refresh carries the account's role and scope as they are now."""
    async with both_stacks(app) as (http, route):
        admin_token, _ = await staff_token(http, db, "admin")
        _, tokens = await account(http)
        await db.execute("UPDATE users SET user_type = 'admin' WHERE id = $1", tokens["user_id"])  # support

        async def refreshed() -> tuple[str, set[str], str]:
            answer = await header_refresh(http, tokens["refresh_token"])
            assert answer.status_code == 200, answer.text
            routed = await route.post(REFRESH, headers=bearer(tokens["refresh_token"]))
            assert routed.status_code == 200, routed.text
            got, want = claims(answer.json()["access_token"]), claims(routed.json()["access_token"])
            assert (got["role"], got["scope"]) == (want["role"], want["scope"])
            return got["role"], set(got["scope"].split()), answer.json()["access_token"]

        role, scope, _ = await refreshed()
        assert "panel" in scope, scope
        demoted = await http.patch(
            f"/api/admin/users/{tokens['user_id']}/change-role",
            headers=bearer(admin_token),
            json={"user_type": "parent"},
        )
        assert demoted.status_code == 200, demoted.text
        role, scope, access = await refreshed()
        assert "panel" not in scope and scope == {"account"}, scope
        assert (await http.get("/api/admin/users/", headers=bearer(access))).status_code == 403

        await db.execute("UPDATE users SET role = 'security' WHERE id = $1", tokens["user_id"])
        role, scope, access = await refreshed()
        assert role == "security" and "audit" in scope, (role, scope)
        assert (await http.get("/api/audit/login-attempts", headers=bearer(access))).status_code == 200

        await db.execute("UPDATE users SET role = 'user' WHERE id = $1", tokens["user_id"])
        role, scope, access = await refreshed()
        assert role == "user" and "audit" not in scope, (role, scope)


# ---- reuse detection still ends the family ---------------------------------------------------------


@pytest.mark.parametrize("settings", [{"refresh_reuse_grace_seconds": 1}], indirect=True)
async def test_a_rotated_token_replayed_in_header_form_after_the_grace_ends_the_session(app, db, settings):
    async with both_stacks(app) as (http, _):
        _, tokens = await account(http)
        old = tokens["refresh_token"]
        rotated = await http.post(REFRESH, json={"refresh_token": old})
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["refresh_token"]
        assert new != old
        # Within the grace the old one is still good in header form (the field client's bursts).
        assert (await header_refresh(http, old)).status_code == 200
        await asyncio.sleep(settings.refresh_reuse_grace_seconds + 0.3)
        replays = await asyncio.gather(*(header_refresh(http, old) for _ in range(3)))
        assert [r.status_code for r in replays] == [401] * 3, [r.text for r in replays]
        assert "refresh_token_reused" in {r.json()["code"] for r in replays}, [r.json() for r in replays]
        # The whole family is over: the new token, and the access token, are refused at once.
        assert (await header_refresh(http, new)).status_code == 401
        assert (await http.get(PROFILE, headers=bearer(tokens["access_token"]))).status_code == 401
        reason = await db.fetchval(
            "SELECT end_reason FROM sessions WHERE id = $1::uuid", claims(tokens["access_token"])["sid"]
        )
        assert reason == "reuse_detected"


# ---- odd shapes: the same answer as the route's -----------------------------------------------------


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: (v if k not in ("access_token", "refresh_token") else "<token>") for k, v in body.items()}
    skip = {"content-length", "date"}
    headers = sorted((k, v) for k, v in response.headers.items() if k not in skip)
    return response.status_code, body, headers


async def test_odd_shapes_get_the_routes_answer_never_a_500_or_a_wrong_200(app, db):
    async with both_stacks(app) as (fast, route):
        _, tokens = await account(fast)
        _, other = await account(fast)
        _, ended = await account(fast)
        assert (await fast.post("/api/auth/logout", headers=bearer(ended["access_token"]))).status_code == 200
        rt, access = tokens["refresh_token"], tokens["access_token"]

        # (method, path, raw headers, body)
        Case = tuple[str, str, list[tuple[bytes, bytes]], bytes | None]
        auth = b"authorization"
        raw = rt.encode()
        cases: list[Case] = [
            ("POST", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer " + access.encode())], None),  # an access token (JWT)
            ("POST", REFRESH, [(auth, b"Bearer " + ended["refresh_token"].encode())], None),
            ("POST", REFRESH, [(auth, b"bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"BEARER " + raw)], None),
            ("POST", REFRESH, [(auth, b"BeArEr " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer  " + raw + b"  ")], None),
            ("POST", REFRESH, [(auth, b" Bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer\t" + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer")], None),
            ("POST", REFRESH, [(auth, b"Bearer ")], None),
            ("POST", REFRESH, [(auth, b"")], None),
            ("POST", REFRESH, [(auth, b"Basic " + raw)], None),
            ("POST", REFRESH, [(auth, b"Token " + raw)], None),
            ("POST", REFRESH, [(auth, raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer Bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer " + raw + b" " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer " + raw + b"," + other["refresh_token"].encode())], None),
            ("POST", REFRESH, [(auth, b"Bearer rt_")], None),
            ("POST", REFRESH, [(auth, b"Bearer rt_" + b"A" * 5000)], None),
            ("POST", REFRESH, [(auth, b"Bearer rt_\xff\xfe\xc3\xa9")], None),
            ("POST", REFRESH, [(auth, b"Bearer " + raw + b".x")], None),
            # duplicated headers, in each order
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (auth, b"Bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (auth, b"Bearer rt_forged")], None),
            ("POST", REFRESH, [(auth, b"Bearer rt_forged"), (auth, b"Bearer " + raw)], None),
            ("POST", REFRESH, [(auth, b"Basic x"), (auth, b"Bearer " + raw)], None),
            # bodies
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"application/json")], b"{}"),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"application/json")], b"null"),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"application/json")], b"[]"),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"text/plain")], b"hello"),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"application/json")], b"{"),
            ("POST", REFRESH, [(auth, b"Bearer rt_forged"), (b"content-type", b"application/json")], b"{}"),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-type", b"text/plain")], None),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"transfer-encoding", b"chunked")], b""),
            ("POST", REFRESH, [(auth, b"Bearer " + raw), (b"content-length", b"00")], b""),
            # other methods and paths
            ("GET", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("PUT", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("DELETE", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("PATCH", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("OPTIONS", REFRESH, [(auth, b"Bearer " + raw)], None),
            ("POST", REFRESH + "/", [(auth, b"Bearer " + raw)], None),
            ("POST", REFRESH + "?x=1&refresh_token=rt_forged", [(auth, b"Bearer " + raw)], None),
            ("POST", "/api/auth//refresh", [(auth, b"Bearer " + raw)], None),
            ("POST", "/API/auth/refresh", [(auth, b"Bearer " + raw)], None),
            ("POST", "/api/auth/refresh%20", [(auth, b"Bearer " + raw)], None),
        ]

        async def send(http: httpx.AsyncClient, case: Case) -> httpx.Response:
            method, path, headers, body = case
            request = http.build_request(method, path)
            # Exactly these headers (httpx would add content-length for a body; raw pairs keep duplicates).
            request.headers = httpx.Headers([(b"host", b"testserver"), *headers])
            if body is not None:
                request.stream = httpx.ByteStream(body)
                if not any(name in (b"transfer-encoding", b"content-length") for name, _ in headers):
                    request.headers["content-length"] = str(len(body))
            return await http.send(request)

        differences = []
        for case in cases:
            got, want = await send(fast, case), await send(route, case)
            if got.status_code >= 500 or _comparable(got) != _comparable(want):
                differences.append((case[0], case[1], case[2][:2], got.status_code, want.status_code, got.text[:200]))
            if got.status_code == want.status_code == 200 and case[0] == "POST":
                # The same access token but for its id and times: the token's own account and session.
                varying = {"jti", "iat", "exp", "nbf"}
                got_claims = {k: v for k, v in claims(got.json()["access_token"]).items() if k not in varying}
                want_claims = {k: v for k, v in claims(want.json()["access_token"]).items() if k not in varying}
                assert got_claims == want_claims and got_claims["sub"] == str(tokens["user_id"]), case
        assert differences == []


async def test_cors_on_the_fast_answer(settings: Settings):
    origins = ["https://app.example.org", "https://*.vercel.app", "https://localhost:*", "capacitor://localhost"]
    app = create_app(msgspec.structs.replace(settings, cors_allow_origins=origins))
    async with both_stacks(app) as (fast, route):
        _, tokens = await account(fast)
        for origin in ("https://app.example.org", "https://my-app-git-x.vercel.app", "https://localhost:43121"):
            got = await header_refresh(fast, tokens["refresh_token"], origin=origin)
            want = await header_refresh(route, tokens["refresh_token"], origin=origin)
            assert got.status_code == want.status_code == 200, (origin, got.text)
            assert got.headers.get("access-control-allow-origin") == origin
            assert got.headers.get("access-control-allow-credentials") == "true"
            assert "Origin" in got.headers.get("vary", "")
            assert _comparable(got) == _comparable(want)
        # The preflight the browser sends first.
        preflight = await fast.options(
            REFRESH,
            headers={
                "origin": "capacitor://localhost",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert (
            preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "capacitor://localhost"
        )
        for origin in ("https://evil.example", "https://a.b.vercel.app", "null", "https://app.example.org.evil.io"):
            got = await header_refresh(fast, tokens["refresh_token"], origin=origin)
            assert not [k for k in got.headers if k.startswith("access-control-")], (origin, dict(got.headers))


# ---- rotation=always, and the recorded address -------------------------------------------------------


@pytest.mark.parametrize("settings", [{"refresh_rotation": "always", "refresh_reuse_grace_seconds": 0}], indirect=True)
async def test_rotation_always_rotates_the_header_form_and_refuses_the_old_token(app):
    async with both_stacks(app) as (http, _):
        _, tokens = await account(http)
        first = await header_refresh(http, tokens["refresh_token"])
        assert first.status_code == 200, first.text
        assert first.json().get("refresh_token") not in (None, tokens["refresh_token"])
        await asyncio.sleep(0.05)
        replay = await header_refresh(http, tokens["refresh_token"])
        assert replay.status_code == 401, replay.text  # replaced (no grace): reuse


async def test_forwarded_for_from_an_untrusted_peer_is_not_recorded(settings: Settings, db):
    """The peer 203.0.113.9 is no trusted proxy: X-Forwarded-For / Forwarded are its own words."""
    app = create_app(msgspec.structs.replace(settings, trusted_proxies=["10.0.0.0/8"]))
    async with both_stacks(app, client=("203.0.113.9", 40000)) as (http, _):
        _, tokens = await account(http)
        sid = claims(tokens["access_token"])["sid"]
        # Make the last use stale, so the fast path writes it again.
        await db.execute("UPDATE sessions SET last_used_at = now() - interval '1 hour' WHERE id = $1::uuid", sid)
        answer = await header_refresh(
            http, tokens["refresh_token"], **{"x-forwarded-for": "198.51.100.77", "forwarded": "for=198.51.100.78"}
        )
        assert answer.status_code == 200, answer.text
        assert await db.fetchval("SELECT host(last_ip) FROM sessions WHERE id = $1::uuid", sid) == "203.0.113.9"
    # And through a trusted proxy, the address it vouches for is what is recorded.
    async with both_stacks(app, client=("10.1.2.3", 40000)) as (http, _):
        await db.execute("UPDATE sessions SET last_used_at = now() - interval '1 hour' WHERE id = $1::uuid", sid)
        answer = await header_refresh(http, tokens["refresh_token"], **{"x-forwarded-for": "198.51.100.77"})
        assert answer.status_code == 200, answer.text
        assert await db.fetchval("SELECT host(last_ip) FROM sessions WHERE id = $1::uuid", sid) == "198.51.100.77"


# ---- one client's request must not decide another's ---------------------------------------------------


async def test_a_hostile_user_agent_in_the_same_batch_does_not_fail_other_refreshes(app):
    """The statement answers every header refresh of one event-loop turn at once: one request's
    User-Agent (text Postgres cannot store) must not turn the others' refreshes into errors."""
    async with both_stacks(app) as (http, _):
        _, victim = await account(http)
        _, attacker = await account(http)
        hostile = {"user-agent": "evil\x00agent"}
        answers = await asyncio.gather(
            *(header_refresh(http, attacker["refresh_token"], **hostile) for _ in range(3)),
            *(header_refresh(http, victim["refresh_token"]) for _ in range(5)),
        )
        victims = answers[3:]
        assert [a.status_code for a in victims] == [200] * 5, [(a.status_code, a.text[:120]) for a in victims]
        assert all(a.status_code != 500 for a in answers), [a.text[:120] for a in answers]


# ---- racing a logout ---------------------------------------------------------------------------------


async def test_no_refresh_started_after_the_logout_returned_succeeds(app):
    async with both_stacks(app) as (http, _):
        phone, tokens = await account(http)
        rt = tokens["refresh_token"]
        issued_before: list[str] = []
        late_successes: list[str] = []
        logged_out = asyncio.Event()

        async def refresher() -> None:
            for _ in range(25):
                started_after = logged_out.is_set()
                answer = await header_refresh(http, rt)
                if answer.status_code == 200:
                    if started_after:
                        late_successes.append(answer.text[:80])
                    else:
                        issued_before.append(answer.json()["access_token"])
                else:
                    assert answer.status_code == 401, answer.text
                await asyncio.sleep(0)

        async def logout() -> None:
            await asyncio.sleep(0.05)
            ended = await http.post("/api/auth/logout", headers=bearer(rt))
            assert ended.status_code == 200, ended.text
            logged_out.set()

        await asyncio.gather(*(refresher() for _ in range(12)), logout())
        assert late_successes == []
        assert issued_before, "no refresh overlapped the logout: the race was not exercised"
        # Tokens issued before the logout are refused on their next use.
        profiles = await asyncio.gather(*(http.get(PROFILE, headers=bearer(a)) for a in issued_before[-10:]))
        assert {p.status_code for p in profiles} == {401}
        assert (await header_refresh(http, rt)).status_code == 401
        del phone


async def test_a_refresh_token_expiring_now_is_refused_on_both_paths(app, db):
    """The fast path compares with Postgres' clock, the route with the app's: a token just past its
    expiry is refused by both."""
    async with both_stacks(app) as (fast, route):
        _, tokens = await account(fast)
        sid = claims(tokens["access_token"])["sid"]
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(milliseconds=200)
        await db.execute("UPDATE refresh_tokens SET expires_at = $2 WHERE session_id = $1::uuid", sid, past)
        for http in (fast, route):
            assert (await header_refresh(http, tokens["refresh_token"])).status_code == 401


async def test_the_statements_connections_killed_mid_burst_give_200_or_503_never_500(app, db):
    """The session-checks pool's backends terminated (pg_terminate_backend) while header refreshes are in
    flight: the fast path hands the statement's error to the route, which raises it into the error
    mapping: 503 database_unavailable with Retry-After, never a 500 or a 401 for a live session."""
    async with both_stacks(app) as (http, _):
        _, tokens = await account(http)
        rt = tokens["refresh_token"]
        assert (await header_refresh(http, rt)).status_code == 200
        pool = app.state.session_checks.pool
        answers: list[httpx.Response] = []
        for _ in range(4):
            pids = [h._con.get_server_pid() for h in pool._holders if h._con is not None and not h._con.is_closed()]
            burst = [asyncio.create_task(header_refresh(http, rt)) for _ in range(12)]
            await asyncio.sleep(0)
            await db.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
            answers += await asyncio.gather(*burst)
        codes = [a.status_code for a in answers]
        bad = [(a.status_code, a.text[:120]) for a in answers if a.status_code not in (200, 503)]
        assert bad == [], bad
        assert all("retry-after" in a.headers for a in answers if a.status_code == 503)
        assert (await header_refresh(http, rt)).status_code in (200, 503)
        final = await header_refresh(http, rt)
        assert final.status_code == 200, final.text
        print("codes", {c: codes.count(c) for c in set(codes)})
