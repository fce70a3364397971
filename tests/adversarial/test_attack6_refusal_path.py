"""Attack 6: the refused-login path after its four speed-ups (docs/security.md).

1. ``parse_address`` is an LRU cache: a flood of made-up hops must not change anyone's budget key.
2. ``CorsMiddleware`` caches the policy's headers per origin and rewrites an answer's headers in one
   pass: no origin may get another's headers, and every answer must be what it was before.
3. ``PipelineTransport`` reads a batch under one deadline: a Redis stalling or dying mid-batch gives
   each caller its own reply or ``LimiterUnavailable``, never another's, and no slot twice.
4. The gate's 429 is a cached (status, body, headers): it must stay the error mapping's answer for
   that decision, carry nothing of another client, and no layer may grow the shared header list.

Real Postgres and Redis throughout; the transport tests run on a Redis of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar, post
from redis.asyncio import Redis

from app.asgi import create_app
from app.core.cors import ENCODED_ORIGINS_CACHED, CorsMiddleware, CorsPolicy
from app.core.embedded import EmbeddedRedis
from app.core.errors import AppError, LimiterUnavailable, RateLimited, app_error_handler, try_again_in
from app.core.http import send_answer
from app.core.settings import Settings
from app.login.gate import LoginGate, refusal_answer
from app.ratelimit.client_ip import (
    MAX_HOP_CHARS,
    PARSED_ADDRESSES_CACHED,
    ClientResolver,
    parse_address,
    parse_short_address,
)
from app.ratelimit.limiter import Decision, LoginLimiter, rate_limit_headers
from app.sessions.header_refresh import HeaderRefresh
from tests.adversarial.test_attack5_transport import (  # the proxy that holds or cuts Redis's replies
    ReplyGate,
    audit_rows,
    clients_of,
    members_match,
    private_redis,  # noqa: F401 (a fixture)
    reply_gate,
)
from tests.asgi import lifespan_running
from tests.helpers import e164, new_phone

WRONG = "Wrong-Password-77"
ORIGINS = [
    "https://app.example.org",
    "https://*.vercel.app",
    "https://localhost:*",
    r"^https://dev\.example\.net(:\d+)?$",
]


# ---- CORS: the policy's headers, cached per origin --------------------------------------------------------


def _old_with_vary(raw: list[tuple[bytes, bytes]], vary: bool) -> list[tuple[bytes, bytes]]:
    """The answer's headers as CorsMiddleware made them before 1f4d526 (the reference)."""
    if not vary:
        return raw
    existing = [value for name, value in raw if name.lower() == b"vary"]
    values = [v.strip() for value in existing for v in value.split(b",") if v.strip()]
    if any(v.lower() == b"origin" for v in values):
        return raw
    others = [(name, value) for name, value in raw if name.lower() != b"vary"]
    return [*others, (b"vary", b", ".join([*values, b"Origin"]))]


def old_cors_headers(
    policy: CorsPolicy, request_headers: list[tuple[bytes, bytes]], app_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    origin_raw = dict(request_headers).get(b"origin")
    origin = origin_raw.decode("latin-1") if origin_raw else None
    added = [(name.lower().encode(), value.encode()) for name, value in policy.headers_for(origin).items()]
    raw = [(name, value) for name, value in app_headers if not name.startswith(b"access-control-")]
    return _old_with_vary(raw, not policy.allow_any) + added


def normalised(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """Headers without Vary (in order), and Vary's values over all its lines: one Vary line or several
    with the same values say the same (RFC 9110 section 5.3)."""
    others = [(name.lower(), value) for name, value in headers if name.lower() != b"vary"]
    varies = [v.strip() for name, value in headers if name.lower() == b"vary" for v in value.split(b",") if v.strip()]
    return others, varies


def echoing_app(app_headers: list[tuple[bytes, bytes]], turns: int = 3) -> Any:
    """An app that yields a few times before it answers (so requests overlap the cache being cleared)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": list(app_headers)})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def answer_of(app: Any, headers: list[tuple[bytes, bytes]], method: str = "POST") -> tuple[int, list[Any]]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/api/auth/login", "headers": headers, "client": ("1.2.3.4", 1)}
    await app(scope, receive, send)
    return sent[0]["status"], list(sent[0]["headers"])


APP_HEADER_SETS = [
    [(b"content-type", b"application/json")],
    [(b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")],
    [(b"vary", b"Accept-Encoding, Origin"), (b"x-a", b"1")],
    [(b"vary", b"accept-encoding"), (b"vary", b"origin")],
    [(b"access-control-allow-origin", b"https://evil.example"), (b"access-control-allow-credentials", b"true")],
    [(b"vary", b"*"), (b"retry-after", b"30")],
]


def request_origins(count: int) -> list[str]:
    """Allowed (exact, case variants, patterns, regex), refused, ``null``, and many distinct ones."""
    fixed = [
        "https://app.example.org",
        "https://APP.example.org",
        "https://App.Example.Org",
        "HTTPS://app.example.org",
        "null",
        "https://app.example.org.evil.com",
        "https://evil.example",
        "https://localhost",
        "https://localhost:8443",
        "https://dev.example.net:3000",
        "https://a.b.vercel.app",
    ]
    many = []
    for n in range(count):
        many.append(f"https://app-{n}.vercel.app" if n % 2 else f"https://evil-{n}.example.com")
    return fixed + many


async def test_every_origin_gets_its_own_cors_headers_while_the_cache_is_cleared_mid_flight() -> None:
    """900 overlapping requests, each from its own origin (the cache is cleared three times while they are
    in the app): each answer carries its own origin's headers and exactly what the pre-1f4d526 code sent."""
    policy = CorsPolicy.parse(ORIGINS)
    origins = request_origins(3 * ENCODED_ORIGINS_CACHED + 100)
    for app_headers in APP_HEADER_SETS:
        middleware = CorsMiddleware(echoing_app(app_headers), policy)
        requests = [[(b"host", b"x"), (b"origin", origin.encode())] for origin in origins]
        requests.append([(b"host", b"x")])  # no Origin at all
        requests.append([(b"host", b"x"), (b"origin", b"")])  # an empty one
        answers = await asyncio.gather(*(answer_of(middleware, headers) for headers in requests))
        for headers, (_, got) in zip(requests, answers, strict=True):
            origin = dict(headers).get(b"origin", b"").decode()
            allowed = [v for name, v in got if name == b"access-control-allow-origin"]
            assert allowed == ([origin.encode()] if origin and policy.allows(origin) else []), (origin, got)
            if allowed:
                assert (b"access-control-allow-credentials", b"true") in got
            assert normalised(got) == normalised(old_cors_headers(policy, headers, app_headers)), (origin, got)
            varies = normalised(got)[1]
            assert [v for v in varies if v.lower() == b"origin"] != [], got
            assert len([v for v in varies if v.lower() == b"origin"]) == 1, got


async def test_a_case_variant_and_the_canonical_origin_each_get_their_own_echo() -> None:
    """Alternating two spellings of one allowed origin (and a refused one): every answer echoes the
    request's own spelling, never the one cached a moment before."""
    policy = CorsPolicy.parse(ORIGINS)
    middleware = CorsMiddleware(echoing_app([]), policy)
    spellings = ["https://app.example.org", "https://APP.EXAMPLE.ORG", "https://evil.example", "null"] * 50
    answers = await asyncio.gather(*(answer_of(middleware, [(b"origin", s.encode())]) for s in spellings))
    for spelling, (_, got) in zip(spellings, answers, strict=True):
        echoed = [v.decode() for name, v in got if name == b"access-control-allow-origin"]
        assert echoed == ([spelling] if policy.allows(spelling) else []), (spelling, got)


async def test_any_origin_policy_answers_star_to_everyone_without_vary() -> None:
    policy = CorsPolicy.parse(["*"])
    app_headers = [(b"vary", b"Accept-Encoding"), (b"access-control-allow-origin", b"https://x")]
    middleware = CorsMiddleware(echoing_app(app_headers), policy)
    for origin in ["https://a.example", "null", "https://b.example"] * 100:
        headers = [(b"origin", origin.encode())]
        _, got = await answer_of(middleware, headers)
        assert got == old_cors_headers(policy, headers, app_headers)
        assert (b"access-control-allow-origin", b"*") in got


@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
async def test_a_request_with_two_origin_headers_is_answered_as_before(method: str) -> None:
    """DEFECT (low): before 1f4d526 the *last* Origin line decided (``dict(scope["headers"])``); the scan
    now takes the *first*. [allowed, refused] was refused and is now admitted; [refused, allowed] the
    reverse. Browsers send one Origin, so this is reachable only by non-browser clients, which CORS does
    not bind anyway, but it is an answer that changed for the same request."""
    policy = CorsPolicy.parse(ORIGINS)
    middleware = CorsMiddleware(echoing_app([(b"content-type", b"application/json")]), policy)
    extra = [(b"access-control-request-method", b"POST")] if method == "OPTIONS" else []
    for first, last in [
        ("https://app.example.org", "https://evil.example"),
        ("https://evil.example", "https://app.example.org"),
    ]:
        headers = [(b"origin", first.encode()), *extra, (b"origin", last.encode())]
        status, got = await answer_of(middleware, headers, method)
        echoed = [v.decode() for name, v in got if name == b"access-control-allow-origin"]
        assert echoed == ([last] if policy.allows(last) else []), (first, last, status, got)


# ---- parse_address: a bounded LRU in front of ipaddress ---------------------------------------------------


TRUSTED = ["10.0.0.0/8", "fd00::/8"]
PROXY = "10.1.2.3"


def uncached(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The same parse without the cache: the reference."""
    text = text.strip()
    return parse_short_address.__wrapped__(text) if text and len(text) <= MAX_HOP_CHARS else None


def key_via(resolver: ClientResolver, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
    return resolver.client_key(resolver.resolve(peer, headers))


# (peer, headers, the budget key the client must get)
KEYED_FORMS: list[tuple[str, list[tuple[bytes, bytes]], str]] = [
    (PROXY, [(b"x-forwarded-for", b"203.0.113.9")], "203.0.113.9"),
    (PROXY, [(b"x-forwarded-for", b"::ffff:203.0.113.9")], "203.0.113.9"),
    (PROXY, [(b"x-forwarded-for", b"[::ffff:203.0.113.9]:443")], "203.0.113.9"),
    (PROXY, [(b"x-forwarded-for", b"203.0.113.9:5555")], "203.0.113.9"),
    (PROXY, [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9, 10.9.9.9")], "203.0.113.9"),
    (PROXY, [(b"forwarded", b'for="[::ffff:203.0.113.9]:1";proto=https')], "203.0.113.9"),
    ("::ffff:10.1.2.3", [(b"x-forwarded-for", b"203.0.113.9")], "203.0.113.9"),  # a dual-stack proxy
    (PROXY, [(b"x-forwarded-for", b"2001:db8:1:2::5%eth0")], "2001:db8:1:2::/64"),
    (PROXY, [(b"x-forwarded-for", b"[2001:db8:1:2:ffff::9%25en0]:8443")], "2001:db8:1:2::/64"),
    (PROXY, [(b"x-forwarded-for", b"2001:db8:1:2::5")], "2001:db8:1:2::/64"),
    ("fd00::1%lo", [(b"x-forwarded-for", b"2001:db8:1:2::77")], "2001:db8:1:2::/64"),
    # an untrusted peer cannot choose its key, whatever it sends
    ("198.51.100.7", [(b"x-forwarded-for", b"203.0.113.9")], "198.51.100.7"),
    ("::ffff:198.51.100.7", [(b"x-forwarded-for", b"203.0.113.9")], "198.51.100.7"),
    ("198.51.100.7", [(b"forwarded", b"for=203.0.113.9")], "198.51.100.7"),
    ("2001:db8:9::1%eth1", [(b"x-forwarded-for", b"203.0.113.9")], "2001:db8:9::/64"),
    # garbage stops the walk at the address the trusted proxy vouched for
    (PROXY, [(b"x-forwarded-for", b"203.0.113.9, unknown")], PROXY),
    (PROXY, [(b"x-forwarded-for", b"203.0.113.9, _hidden, 10.9.9.9")], "10.9.9.9"),
]


def test_a_flood_of_made_up_hops_changes_no_clients_budget_key() -> None:
    """Three times the cache's size of distinct hops from a trusted proxy, between checks: every form of
    a client (mapped IPv6, zone ids, ports, brackets, Forwarded) keeps its key, evicted or not."""
    resolver = ClientResolver(TRUSTED)
    for peer, headers, expected in KEYED_FORMS:
        assert key_via(resolver, peer, headers) == expected, (peer, headers)
    misses_before = parse_short_address.cache_info().misses
    for round_ in range(3):
        for n in range(PARSED_ADDRESSES_CACHED):
            hop = (
                f"198.{round_}.{n // 256}.{n % 256}"
                if n % 3
                else (f"2001:db8:{round_:x}:{n:x}::1%z{n}" if n % 2 else f"::ffff:192.0.{n % 256}.{round_}")
            )
            key = key_via(resolver, PROXY, [(b"x-forwarded-for", hop.encode())])
            assert key == resolver.client_key(uncached(hop)), hop
        for peer, headers, expected in KEYED_FORMS:
            assert key_via(resolver, peer, headers) == expected, (round_, peer, headers)
    info = parse_short_address.cache_info()
    assert info.currsize <= PARSED_ADDRESSES_CACHED
    assert info.misses - misses_before >= 2 * PARSED_ADDRESSES_CACHED  # the flood really evicted


def test_cached_addresses_are_immutable_values() -> None:
    """Whatever a caller does with an address it got, the next caller's parse of the same text is the same."""
    first = parse_address("[fe80::1%eth0]:80")
    assert first == ipaddress.IPv6Address("fe80::1") and first is not None and first.scope_id is None
    with pytest.raises(AttributeError):
        first.foo = 1  # type: ignore[union-attr]
    assert parse_address("::ffff:1.2.3.4") == ipaddress.IPv4Address("1.2.3.4")
    assert parse_address("unknown") is None and parse_address("unknown") is None


def test_texts_too_long_to_be_an_address_are_never_cached() -> None:
    """A hop of any length is a cache key only if it could be an address: a flood of header-sized
    hops leaves the cache as it was (it holds at most 4096 short texts)."""
    before = parse_short_address.cache_info()
    for n in range(200):
        assert parse_address(f"{n}." + "9" * 8000) is None
        assert parse_address(" " * 100 + f"203.0.113.{n % 250}" + "x" * 100) is None
    after = parse_short_address.cache_info()
    assert (after.hits, after.misses, after.currsize) == (before.hits, before.misses, before.currsize)


async def test_one_client_behind_the_proxy_in_every_spelling_shares_one_budget_across_a_flood(
    settings: Settings,
) -> None:
    """Through the app: a client's wrong passwords under five spellings of its address (mapped IPv6, port,
    brackets, Forwarded) with an eviction flood between them spend one budget; a neighbour's is untouched;
    an untrusted peer naming the victim in X-Forwarded-For spends its own."""
    settings = msgspec.structs.replace(settings, trusted_proxies=TRUSTED, forwarded_header="auto")
    limit = settings.rate_limit_login_failures
    spellings = [
        [(b"x-forwarded-for", b"203.0.113.50")],
        [(b"x-forwarded-for", b"::ffff:203.0.113.50")],
        [(b"x-forwarded-for", b"[::ffff:203.0.113.50]:443")],
        [(b"x-forwarded-for", b"203.0.113.50:9")],
        [(b"forwarded", b'for="203.0.113.50:1"')],
        [(b"x-forwarded-for", b"198.51.100.1, ::ffff:203.0.113.50")],
    ]
    async with clients_of(create_app(settings), PROXY, "198.51.100.99") as (proxy, outsider):
        body = {"phone_number": new_phone(), "password": WRONG}
        # The outsider names the victim: its own key is spent, not the victim's.
        for _ in range(limit):
            answer = await outsider.post("/api/auth/login", json=body, headers={"x-forwarded-for": "203.0.113.50"})
            assert answer.status_code == 401
        statuses = []
        for n, headers in enumerate(spellings[: limit + 1] * 2):
            for i in range(PARSED_ADDRESSES_CACHED + 10):  # evict everything parsed so far
                parse_address(f"100.64.{n}.{i % 250}:{i}")
            answer = await proxy.post(
                "/api/auth/login", json=body, headers={k.decode(): v.decode() for k, v in headers}
            )
            statuses.append(answer.status_code)
        assert statuses == [401] * limit + [429] * (len(statuses) - limit), statuses
        neighbour = await proxy.post("/api/auth/login", json=body, headers={"x-forwarded-for": "203.0.113.51"})
        assert neighbour.status_code == 401


# ---- the gate's cached 429 -----------------------------------------------------------------------------------


def pre_change_refusal(decision: Decision) -> RateLimited:
    """The RateLimited the gate built per refusal before 3e08be6."""
    return RateLimited(
        f"Too many failed sign-in attempts. {try_again_in(decision.retry_after)}",
        headers={"Retry-After": str(decision.retry_after), **rate_limit_headers("login", decision)},
        extra={"retry_after": decision.retry_after},
    )


async def route_answer(exc: AppError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``exc`` raised in a route and answered by the app's own error mapping."""

    @post("/boom", sync_to_thread=False)
    def boom() -> None:
        raise exc

    app = Litestar([boom], exception_handlers={AppError: app_error_handler})
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/boom",
        "raw_path": b"/boom",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [],
        "client": ("1.2.3.4", 1),
        "server": ("x", 80),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, [(n.lower(), v) for n, v in start["headers"]]


REFUSAL_CASES = [(1, 5, 900), (59, 5, 900), (60, 5, 900), (61, 5, 900), (899, 5, 900), (900, 5, 900)]
REFUSAL_CASES += [(930, 5, 900), (7199, 3, 86400), (7201, 3, 86400), (0, 5, 900), (17, 10, 60)]


@pytest.mark.parametrize(("retry_after", "limit", "window"), REFUSAL_CASES)
async def test_the_cached_refusal_is_the_error_mappings_answer(retry_after: int, limit: int, window: int) -> None:
    spent = Decision(False, limit, 0, retry_after, window, None, "rate_limited", event_queued=True)
    status, body, headers = refusal_answer(retry_after, limit, window)
    route_status, route_body, route_headers = await route_answer(pre_change_refusal(spent))
    assert (status, body) == (route_status, route_body)
    assert dict(headers) == {k: v for k, v in route_headers if k in dict(headers)}
    assert {k for k, _ in route_headers} - {k for k, _ in headers} <= {b"date", b"server"}
    decoded = msgspec.json.decode(body)
    assert decoded["retry_after"] == retry_after == int(dict(headers)[b"retry-after"])
    assert dict(headers)[b"ratelimit"] == f'"login";r=0;t={retry_after}'.encode()
    assert dict(headers)[b"ratelimit-policy"] == f'"login";q={limit};w={window}'.encode()
    assert decoded["message"] == f"Too many failed sign-in attempts. {try_again_in(retry_after)}"
    assert len(headers) == len(dict(headers))  # no header twice


async def test_a_layer_appending_to_the_sent_headers_does_not_grow_the_cached_refusal() -> None:
    answer = refusal_answer(123, 5, 900)
    snapshot = list(answer[2])
    for _ in range(5):
        sent: list[Any] = []

        async def send(message: Any, sent: list[Any] = sent) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-layer", b"1"))
                message["headers"][0] = (b"content-type", b"text/evil")
            sent.append(message)

        await send_answer(send, answer)
        assert sent[0]["headers"].count((b"x-layer", b"1")) == 1
    assert answer[2] == snapshot
    assert refusal_answer(123, 5, 900)[2] == snapshot


class HeaderMutator:
    """A middleware that edits the start message's header list in place (as some do)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def mutate(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-layer", b"1"))
                message["headers"].append((b"retry-after", b"0"))
            await send(message)

        await self.app(scope, receive, mutate)


async def test_interleaved_clients_each_get_their_own_wait_origin_and_one_audit_row_per_refusal(
    settings: Settings,
) -> None:
    """Two spent clients with different waits (one budget aged in Redis to ~100 s), refused in parallel
    from two origins through a layer that edits header lists in place: every 429 carries its own
    client's wait (Retry-After = RateLimit t = body retry_after, the message saying it) and its own
    origin, no header grows, and every refusal is one login_attempts row."""
    settings = msgspec.structs.replace(settings, cors_allow_origins=["https://a.example.org", "https://b.example.org"])
    app = create_app(settings)
    limit = settings.rate_limit_login_failures
    window = settings.rate_limit_login_window_seconds
    phone = new_phone()
    body = {"phone_number": phone, "password": WRONG}
    async with lifespan_running(app), contextlib.AsyncExitStack() as stack:
        # The served stack (CORS, gate, header refresh, app) with a layer between the gate and CORS
        # that edits the header list of what the gate sends, in place.
        asgi = CorsMiddleware(
            HeaderMutator(LoginGate(HeaderRefresh(app, litestar=app), litestar=app)), app.state.cors_policy
        )
        first, second = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=asgi, client=(address, 50000)), base_url="http://testserver"
                )
            )
            for address in ("198.51.100.61", "198.51.100.62")
        ]
        for http in (first, second):
            for _ in range(limit):
                assert (await http.post("/api/auth/login", json=body)).status_code == 401
        assert settings.redis_url
        redis = Redis.from_url(settings.redis_url)
        try:
            key = app.state.limiter.budget_key("login", "198.51.100.62")
            aged = int(time.time() * 1000) - (window - 100) * 1000
            failures = await redis.zrangebyscore(key, "(0", "+inf")
            assert len(failures) == limit
            await redis.zadd(key, dict.fromkeys(failures, aged), xx=True)
        finally:
            await redis.aclose()
        refusals = 40

        async def refused(n: int) -> tuple[int, Any]:
            http, origin = (first, "https://a.example.org") if n % 2 else (second, "https://b.example.org")
            return n, await http.post(
                "/api/auth/login", json=body, headers={"origin": origin, "x-request-id": f"a6-refusal-{n}"}
            )

        answers = await asyncio.gather(*(refused(n) for n in range(refusals)))
    for n, answer in answers:
        assert answer.status_code == 429, answer.text
        origin = "https://a.example.org" if n % 2 else "https://b.example.org"
        assert answer.headers.get_list("access-control-allow-origin") == [origin]
        waits = answer.headers.get_list("retry-after")
        assert len(waits) == 2 and waits[-1] == "0"  # the app's one, then the layer's own: nothing accumulated
        wait = int(waits[0])
        assert (window - 2 <= wait <= window) if n % 2 else (98 <= wait <= 101), (n, wait)
        assert answer.headers["ratelimit"] == f'"login";r=0;t={wait}'
        assert answer.headers["ratelimit-policy"] == f'"login";q={limit};w={window}'
        assert answer.json()["retry_after"] == wait
        assert answer.json()["message"] == f"Too many failed sign-in attempts. {try_again_in(wait)}"
        assert answer.headers.get_list("x-layer") == ["1"]
        assert int(answer.headers["content-length"]) == len(answer.content)
    rows = await audit_rows(settings, e164(phone), 2 * limit + refusals, within=10)
    per_request = Counter(row["request_id"] for row in rows if row["request_id"].startswith("a6-refusal-"))
    assert len(per_request) == refusals and set(per_request.values()) == {1}, per_request
    assert Counter(row["reason"] for row in rows)["rate_limited"] == refusals


# ---- the transport: one deadline for a batch's replies ---------------------------------------------------------


async def start_held(gate: ReplyGate, *calls: Coroutine[Any, Any, Any]) -> list[asyncio.Task[Any]]:
    """Start ``calls`` with the gate holding Redis's replies; return once their replies are held."""
    gate.hold = True
    gate.replied.clear()
    tasks = [asyncio.create_task(call) for call in calls]
    await asyncio.wait_for(gate.replied.wait(), 5)
    await asyncio.sleep(0.05)
    return tasks


async def budget_sizes(redis: Redis, limiter: LoginLimiter, clients: list[str]) -> list[int]:
    return [await redis.zcard(limiter.budget_key("login", client)) for client in clients]


async def test_a_redis_stalling_mid_batch_fails_the_batch_within_the_deadline_and_no_reply_strays(
    private_redis: EmbeddedRedis,  # noqa: F811
    settings: Settings,
) -> None:
    """Part of a batch's replies arrive, then none: the batch is LimiterUnavailable at the socket timeout
    (not later), its connection is dropped, and the next batches (same pool) read their own replies; every
    call ran in Redis exactly once."""
    admin = Redis.from_url(private_redis.url)
    async with reply_gate(private_redis) as gate:
        redis = Redis.from_url(gate.url, socket_timeout=0.4, retry=None)
        try:
            limiter = LoginLimiter(redis, settings)
            transport = limiter._transport
            assert (await limiter.reserve_client("192.0.2.1")).allowed
            for round_ in range(3):
                clients = [f"198.51.100.{round_}-{n}" for n in range(8)]
                calls = [limiter.reserve_call("login", client) for client in clients]
                started = time.monotonic()
                (running,) = await start_held(gate, transport.run(calls))
                gate.release(len(gate.held[-1]) // 2 if round_ != 1 else 1)  # half the replies; or one byte
                with pytest.raises(LimiterUnavailable):
                    await asyncio.wait_for(running, 3)
                assert time.monotonic() - started < 0.4 + 0.5
                assert await budget_sizes(admin, limiter, clients) == [1] * 8  # each ran once, none twice

                gate.hold = False
                gate.release_all()  # the abandoned batch's replies, on its (dropped) connection
                others = [f"203.0.113.{round_}-{n}" for n in range(8)]
                second = [limiter.reserve_call("login", client) for client in others]
                assert members_match(second, await asyncio.wait_for(transport.run(second), 3)) == []
                assert await budget_sizes(admin, limiter, others) == [1] * 8
        finally:
            await redis.aclose()
            await admin.aclose()


async def test_replies_trickling_in_under_the_per_reply_timeout_still_meet_the_batch_deadline(
    private_redis: EmbeddedRedis,  # noqa: F811
    settings: Settings,
) -> None:
    """Each reply arrives 0.15 s after the one before (a per-reply timer of 0.4 s would wait for all of
    them): the batch of six fails at the 0.4 s deadline, the replies read so far go to nobody, and each
    caller of a later batch gets its own decision."""
    admin = Redis.from_url(private_redis.url)
    async with reply_gate(private_redis) as gate:
        redis = Redis.from_url(gate.url, socket_timeout=0.4, retry=None)
        try:
            limiter = LoginLimiter(redis, settings)
            assert (await limiter.reserve_client("192.0.2.1")).allowed
            clients = [f"198.51.100.77-{n}" for n in range(6)]
            started = time.monotonic()
            callers = await start_held(gate, *(limiter.reserve_client(client) for client in clients))
            held = bytes(gate.held[-1])
            replies = held.split(b"*4\r\n")[1:]  # each allowed reserve reply is a 4-element array
            assert len(replies) == 6, held
            for reply in replies:
                gate.release(len(reply) + 4)
                await asyncio.sleep(0.15)
                if all(task.done() for task in callers):
                    break
            outcomes = await asyncio.gather(*callers, return_exceptions=True)
            assert all(isinstance(o, LimiterUnavailable) for o in outcomes), outcomes
            assert time.monotonic() - started < 0.4 + 0.5
            gate.hold = False
            gate.release_all()
            assert await budget_sizes(admin, limiter, clients) == [1] * 6
            later = await asyncio.gather(*(limiter.reserve_client(f"203.0.113.88-{n}") for n in range(6)))
            assert [d.remaining for d in later] == [settings.rate_limit_login_failures - 1] * 6
        finally:
            await redis.aclose()
            await admin.aclose()


async def test_a_connection_killed_mid_read_fails_fast_and_recovers(
    private_redis: EmbeddedRedis,  # noqa: F811
    settings: Settings,
) -> None:
    """CLIENT KILL while a batch's replies are half delivered: every caller of the batch is
    LimiterUnavailable at once (not at the deadline), no call ran twice, later callers get their own."""
    admin = Redis.from_url(private_redis.url)
    async with reply_gate(private_redis) as gate:
        redis = Redis.from_url(gate.url, socket_timeout=3.0, retry=None)
        try:
            limiter = LoginLimiter(redis, settings)
            assert (await limiter.reserve_client("192.0.2.1")).allowed
            clients = [f"198.51.100.88-{n}" for n in range(10)]
            started = time.monotonic()
            callers = await start_held(gate, *(limiter.reserve_client(client) for client in clients))
            gate.release(len(gate.held[-1]) // 3)
            await asyncio.sleep(0.05)
            killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            assert int(killed) >= 1
            outcomes = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 5)
            assert time.monotonic() - started < 1.5
            lost = [o for o in outcomes if not isinstance(o, Decision)]
            assert lost and all(isinstance(o, LimiterUnavailable) for o in lost), outcomes
            assert await budget_sizes(admin, limiter, clients) == [1] * 10
            gate.hold = False
            codes = []
            for _ in range(3):
                try:
                    codes.append((await limiter.reserve_client("203.0.113.99")).remaining)
                    break
                except LimiterUnavailable:
                    codes.append(None)
            assert codes[-1] == settings.rate_limit_login_failures - 1, codes
        finally:
            await redis.aclose()
            await admin.aclose()


async def test_callers_cancelled_mid_batch_leave_the_others_their_own_decisions(
    private_redis: EmbeddedRedis,  # noqa: F811
    settings: Settings,
) -> None:
    """Half the requests of a batch hang up while it is read: the rest get the decision of their own call
    (each client distinct: remaining = limit - 1, and its member is in its own budget)."""
    admin = Redis.from_url(private_redis.url)
    async with reply_gate(private_redis) as gate:
        redis = Redis.from_url(gate.url, socket_timeout=2.0, retry=None)
        try:
            limiter = LoginLimiter(redis, settings)
            assert (await limiter.reserve_client("192.0.2.1")).allowed
            clients = [f"198.51.100.99-{n}" for n in range(12)]
            callers = await start_held(gate, *(limiter.reserve_client(client) for client in clients))
            gate.release(len(gate.held[-1]) // 2)
            await asyncio.sleep(0.02)
            for task in callers[::2]:
                task.cancel()
            gate.hold = False
            gate.release_all()
            outcomes = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 3)
            for client, outcome in zip(clients[1::2], outcomes[1::2], strict=True):
                assert isinstance(outcome, Decision) and outcome.allowed, outcome
                assert outcome.remaining == settings.rate_limit_login_failures - 1
                assert outcome.reservation is not None
                members = await admin.zrange(limiter.budget_key("login", client), 0, -1)
                assert members == [outcome.reservation.member.encode()]
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[::2])
            assert await budget_sizes(admin, limiter, clients) == [1] * 12
        finally:
            await redis.aclose()
            await admin.aclose()


async def test_a_paused_redis_during_refusals_answers_503_and_audits_each_attempt_once(
    private_redis: EmbeddedRedis,  # noqa: F811
    settings: Settings,
) -> None:
    """Through the app: a spent client keeps signing in while Redis is paused. Every answer is 429 or 503
    (with Retry-After), each attempt is one audit row, and afterwards the refusals are 429 again."""
    settings = msgspec.structs.replace(settings, redis_url=private_redis.url)
    app = create_app(settings)
    limit = settings.rate_limit_login_failures
    phone = new_phone()
    body = {"phone_number": phone, "password": WRONG}
    admin = Redis.from_url(private_redis.url)
    try:
        async with clients_of(app, "198.51.100.111") as (http,):
            pool = app.state.redis.connection_pool
            pool.connection_kwargs["socket_timeout"] = 0.3  # a short deadline, so the test is short
            for connection in [*pool._available_connections, *pool._in_use_connections]:
                connection.socket_timeout = 0.3
            for _ in range(limit):
                assert (await http.post("/api/auth/login", json=body)).status_code == 401
            before = [await http.post("/api/auth/login", json=body, headers={"x-request-id": "a6-p-0"})]
            await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
            during = await asyncio.gather(
                *(http.post("/api/auth/login", json=body, headers={"x-request-id": f"a6-p-{n}"}) for n in range(1, 9))
            )
            await asyncio.sleep(0.8)
            after = [
                await http.post("/api/auth/login", json=body, headers={"x-request-id": f"a6-p-{n}"})
                for n in range(9, 12)
            ]
            answers = before + list(during) + after
            statuses = [a.status_code for a in answers]
            assert statuses[0] == 429 and set(statuses) <= {429, 503}, statuses
            assert 503 in statuses[1:9], statuses  # the pause was felt
            assert statuses[-1] == 429, statuses
            for answer in answers:
                assert "retry-after" in answer.headers
                if answer.status_code == 429:
                    assert answer.json()["retry_after"] == int(answer.headers["retry-after"])
                else:
                    assert answer.json()["code"] == "rate_limiter_unavailable"
            rows = await audit_rows(settings, e164(phone), limit + len(answers), within=8)
        per_request = Counter(row["request_id"] for row in rows if row["request_id"].startswith("a6-p-"))
        assert len(per_request) == len(answers) and set(per_request.values()) == {1}, per_request
    finally:
        await admin.aclose()
