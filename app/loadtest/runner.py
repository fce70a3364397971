"""Scenarios, the request loop, and the verdict.

Every request carries ``X-Request-ID: lt-<run>-<n>``; the server stores it with the audit event, so
the verdict can count this run's rows in ``login_attempts`` exactly. Simulated clients are addresses
of 198.18.0.0/15 (the benchmarking range) sent as ``X-Forwarded-For``, which the server believes
only when started with ``TRUSTED_PROXIES`` covering this machine; the run checks that first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import random
import secrets
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core.postgres import plain_dsn

COMMON_PIN = "2580"  # the classic keypad column; the service refuses it as a new PIN
WRONG_PASSWORD = "Wrong-Password-77"  # noqa: S105 - the guess an attacker sends
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class LoadTestError(Exception):
    """The run could not start or its setup failed (not a verdict)."""


@dataclass
class Outcome:
    kind: str  # "attack" | "legit"
    client: str
    phone: str
    method: str
    status: int
    latency: float
    finished: float
    code: str = ""


@dataclass
class Policy:
    limit: int = 5
    window: float = 900.0

    @classmethod
    def from_header(cls, value: str | None) -> Policy:
        # RateLimit-Policy: "login";q=5;w=900
        policy = cls()
        for part in (value or "").split(";"):
            name, _, number = part.strip().partition("=")
            if name == "q" and number.isdigit():
                policy.limit = int(number)
            elif name == "w" and number.isdigit():
                policy.window = float(number)
        return policy


@dataclass
class Run:
    url: str
    scenario: str
    duration: float
    concurrency: int
    max_requests: int
    pin_max_failures: int
    account_max_failures: int
    ussd_token: str | None = None  # the ussd scenario's gateway credential
    ussd_session_max_failures: int = 3
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    outcomes: list[Outcome] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    sent: int = 0
    started: float = 0.0
    _addresses: Any = None
    _first: int = 0
    _size: int = 0

    def next_request_id(self) -> str:
        self.sent += 1
        return f"lt-{self.run_id}-{self.sent}"

    def login_attempts(self) -> int:
        """Audited calls this run made: sign-ins, and USSD registrations (the login endpoint's are not)."""
        return sum(1 for o in self.outcomes if o.kind in ("attack", "legit", "probe", "ussd-register"))

    def fresh_address(self) -> str:
        if self._addresses is None:
            network = ipaddress.ip_network("198.18.0.0/15")
            first, size = int(network.network_address), network.num_addresses
            offset = random.randrange(size)  # noqa: S311 - labels, not secrets
            self._addresses = itertools.count(offset)
            self._first, self._size = first, size
        return str(ipaddress.IPv4Address(self._first + 1 + next(self._addresses) % (self._size - 2)))


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname or ""
    if not allow_remote and host not in LOOPBACK and not host.startswith("127."):
        raise LoadTestError(f"{host} is not this machine; pass --allow-remote to load-test it deliberately")


async def _post(
    client: httpx.AsyncClient, run: Run, path: str, body: dict[str, Any], address: str | None
) -> httpx.Response:
    headers = {"X-Request-ID": run.next_request_id(), "User-Agent": f"ladys-essence-loadtest/{run.scenario}"}
    if address:
        headers["X-Forwarded-For"] = address
    return await client.post(path, json=body, headers=headers)


async def _attempt(
    client: httpx.AsyncClient, run: Run, kind: str, address: str | None, phone: str, secret: dict[str, str]
) -> None:
    started = time.perf_counter()
    method = "pin" if "pin" in secret else "password"
    try:
        response = await _post(client, run, "/api/auth/login", {"phone_number": phone, **secret}, address)
        status = response.status_code
        code = response.json().get("code", "") if status >= 400 else ""
        if "ratelimit-policy" in response.headers and run.policy.limit == Policy().limit:
            run.policy = Policy.from_header(response.headers["ratelimit-policy"])
    except (httpx.HTTPError, ValueError):
        status, code = 0, "transport_error"
    finished = time.perf_counter()
    run.outcomes.append(Outcome(kind, address or "direct", phone, method, status, finished - started, finished, code))


async def _register(client: httpx.AsyncClient, run: Run, phone: str, password: str, pin: str | None = None) -> None:
    body: dict[str, Any] = {"name": "Load Test", "phone_number": phone, "password": password}
    if pin:
        body["pin"] = pin
    response = await _post(client, run, "/api/auth/register", body, run.fresh_address())
    if response.status_code not in (201, 409):
        raise LoadTestError(f"could not register {phone}: {response.status_code} {response.text[:200]}")


async def probe_forwarding(client: httpx.AsyncClient, run: Run) -> bool:
    """True when the server keys clients by X-Forwarded-For (it trusts this machine as a proxy)."""
    remaining = []
    for _ in range(2):
        response = await _post(
            client,
            run,
            "/api/auth/login",
            {"phone_number": _phone(random.randrange(10**6)), "password": WRONG_PASSWORD},  # noqa: S311
            run.fresh_address(),
        )
        header = response.headers.get("ratelimit", "")
        remaining.append(header.split("r=")[1].split(";")[0] if "r=" in header else None)
        run.outcomes.append(Outcome("probe", "probe", "", "password", response.status_code, 0.0, time.perf_counter()))
    return remaining[0] is not None and remaining[0] == remaining[1]


def _phone(index: int) -> str:
    """Distinct valid Rwandan mobile numbers, unlikely to belong to real test users."""
    return f"+25078{9_000_000 + index % 1_000_000:07d}"


# ---- scenarios --------------------------------------------------------------------------------------


async def _loop(run: Run, work: Callable[[], Any]) -> None:
    deadline = run.started + run.duration
    in_flight: set[asyncio.Task[Any]] = set()
    while time.perf_counter() < deadline and run.sent < run.max_requests:
        while len(in_flight) < run.concurrency and run.sent < run.max_requests:
            task = asyncio.ensure_future(work())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0)
        await asyncio.sleep(0.001)
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)


async def brute_force(client: httpx.AsyncClient, run: Run, forwarding: bool) -> None:
    """Many concurrent wrong passwords against one account, from one client."""
    victim = _phone(int(run.run_id, 16) % 10**6)
    await _register(client, run, victim, f"Real-{secrets.token_urlsafe(12)}")
    attacker = run.fresh_address() if forwarding else None
    await _loop(run, lambda: _attempt(client, run, "attack", attacker, victim, {"password": WRONG_PASSWORD}))


async def spray(client: httpx.AsyncClient, run: Run, forwarding: bool) -> None:
    """One common PIN across many numbers, from many clients."""
    if not forwarding:
        raise LoadTestError("spray simulates many clients: start the server with TRUSTED_PROXIES=127.0.0.1/32")
    clients = [run.fresh_address() for _ in range(max(50, run.concurrency))]
    base = int(run.run_id, 16) % 10**6

    def one() -> Any:
        phone = _phone(base + random.randrange(500))  # noqa: S311
        return _attempt(client, run, "attack", random.choice(clients), phone, {"pin": COMMON_PIN})  # noqa: S311

    await _loop(run, one)


async def stuffing(client: httpx.AsyncClient, run: Run, forwarding: bool) -> None:
    """Leaked (phone, password) pairs tried from many clients."""
    if not forwarding:
        raise LoadTestError("stuffing simulates many clients: start the server with TRUSTED_PROXIES=127.0.0.1/32")
    base = int(run.run_id, 16) % 10**6
    pairs = [(_phone(base + i), f"Leaked-{i}-{run.run_id}") for i in range(2000)]

    def one() -> Any:
        phone, password = random.choice(pairs)  # noqa: S311
        return _attempt(client, run, "attack", run.fresh_address(), phone, {"password": password})

    await _loop(run, one)


async def mixed(client: httpx.AsyncClient, run: Run, forwarding: bool) -> None:
    """Real users keep signing in while a brute-force and a spray run."""
    if not forwarding:
        raise LoadTestError("mixed simulates many clients: start the server with TRUSTED_PROXIES=127.0.0.1/32")
    base = int(run.run_id, 16) % 10**6
    users = [(_phone(base + 700 + i), f"Real-{secrets.token_urlsafe(12)}") for i in range(8)]
    for phone, password in users:
        await _register(client, run, phone, password)
    attacker = run.fresh_address()
    sprayers = [run.fresh_address() for _ in range(20)]

    def one() -> Any:
        roll = random.random()  # noqa: S311
        if roll < 0.2:
            phone, password = random.choice(users)  # noqa: S311
            return _attempt(client, run, "legit", run.fresh_address(), phone, {"password": password})
        if roll < 0.6:
            return _attempt(client, run, "attack", attacker, users[0][0], {"password": WRONG_PASSWORD})
        phone = _phone(base + random.randrange(300))  # noqa: S311
        return _attempt(client, run, "attack", random.choice(sprayers), phone, {"pin": COMMON_PIN})  # noqa: S311

    await _loop(run, one)


async def _ussd_post(client: httpx.AsyncClient, run: Run, path: str, body: dict[str, Any]) -> httpx.Response:
    """A call of the USSD gateway: its own address (never X-Forwarded-For) and its service credential."""
    headers = {
        "X-Request-ID": run.next_request_id(),
        "User-Agent": "ladys-essence-loadtest/ussd",
        "Authorization": f"Bearer {run.ussd_token}",
    }
    return await client.post(path, json=body, headers=headers)


async def _ussd_verify(client: httpx.AsyncClient, run: Run, kind: str, session: str, phone: str, pin: str) -> None:
    started = time.perf_counter()
    try:
        body = {"phone_number": phone, "pin": pin, "session_id": session}
        response = await _ussd_post(client, run, "/api/ussd/verify-pin", body)
        status = response.status_code
        code = response.json().get("code", "") if status >= 400 else ""
    except (httpx.HTTPError, ValueError):
        status, code = 0, "transport_error"
    finished = time.perf_counter()
    run.outcomes.append(Outcome(kind, session, phone, "pin", status, finished - started, finished, code))


def _real_pin() -> str:
    """A PIN the service accepts (4 digits, not weak), never the attackers' COMMON_PIN."""
    from app.accounts.passwords import pin_problem

    while True:
        pin = f"{secrets.randbelow(10_000):04d}"
        if pin != COMMON_PIN and pin_problem(pin) is None:
            return pin


async def ussd(client: httpx.AsyncClient, run: Run, forwarding: bool) -> None:
    """Feature phones through one gateway: wrong PINs on many numbers while real callers sign in.

    Every call comes from the gateway's one address with its credential, so only the per-number
    PIN lock and the per-session tries stand between an attacker and a PIN: the verdict checks
    both held and that no real caller was refused.
    """
    if not run.ussd_token:
        raise LoadTestError("the ussd scenario needs a gateway credential: --ussd-token, or --database-url to make one")
    base = int(run.run_id, 16) % 10**6
    callers = [(_phone(base + 800 + i), _real_pin()) for i in range(8)]
    for index, (phone, pin) in enumerate(callers):
        body = {"phone_number": phone, "name": f"Caller {index}", "user_type": "adolescent", "pin": pin}
        response = await _ussd_post(client, run, "/api/ussd/register", {**body, "session_id": f"reg-{index}"})
        run.outcomes.append(Outcome("ussd-register", "gateway", phone, "pin", response.status_code, 0.0, 0.0))
        if response.status_code not in (201, 409):
            raise LoadTestError(f"could not register a USSD caller: {response.status_code} {response.text[:200]}")
    targets = [_phone(base + 2000 + i) for i in range(150)]  # numbers the attack guesses at

    def one() -> Any:
        if random.random() < 0.2:  # noqa: S311
            phone, pin = random.choice(callers)  # noqa: S311
            return _ussd_verify(client, run, "legit", f"real-{secrets.token_hex(4)}", phone, pin)
        session = f"atk-{random.randrange(60)}"  # noqa: S311 - sessions reused far past their tries
        return _ussd_verify(client, run, "attack", session, random.choice(targets), COMMON_PIN)  # noqa: S311

    await _loop(run, one)


async def issue_ussd_credential(database_url: str, run: Run) -> str:
    """A gateway credential for this run, written straight into the target's database."""
    import asyncpg

    from app.platform.credentials import new_token, token_digest

    token = new_token()
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO service_credentials (name, token_hash, scopes, created_at) VALUES ($1, $2, $3, now())",
            f"loadtest-{run.run_id}",
            token_digest(token),
            ["ussd"],
        )
    finally:
        await conn.close()
    return token


SCENARIO_FUNCTIONS = {"brute-force": brute_force, "spray": spray, "stuffing": stuffing, "mixed": mixed, "ussd": ussd}


# ---- verdict ----------------------------------------------------------------------------------------


def _max_in_window(times: list[float], window: float) -> int:
    """The most events inside any interval of ``window`` seconds (two pointers over sorted times).

    Times are when answers arrived here, a little after the server stamped the failures; a slack of
    up to a second keeps that difference from reading as a violation at the window's edge.
    """
    window -= min(1.0, window * 0.1)
    times = sorted(times)
    best = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# Exit statuses of `ladys-essence loadtest` (README: Load-testing the limits).
EXIT_PASS, EXIT_FAIL, EXIT_INCOMPLETE = 0, 1, 2


@dataclass
class Verdict:
    lines: list[str]
    ok: bool
    complete: bool = True  # False: the audit trail could not be checked

    @property
    def word(self) -> str:
        if not self.ok:
            return "FAIL"
        return "PASS" if self.complete else "INCOMPLETE"

    @property
    def exit_status(self) -> int:
        if not self.ok:
            return EXIT_FAIL
        return EXIT_PASS if self.complete else EXIT_INCOMPLETE


def judge(run: Run, audited: int | None) -> Verdict:
    """Did every limit hold exactly, and was every attempt audited?"""
    lines: list[str] = []
    ok = True
    logins = [o for o in run.outcomes if o.kind in ("attack", "legit")]
    window = run.policy.window
    # A 401 or a 200 means the credential was verified. Per client: at most `limit` failures per window.
    failures_by_client: dict[str, list[float]] = defaultdict(list)
    for outcome in logins:
        if outcome.status == 401:
            failures_by_client[outcome.client].append(outcome.finished)
    if run.scenario == "ussd":  # one gateway address: the per-session tries stand in for a client's budget
        worst_session = max((len(t) for t in failures_by_client.values()), default=0)
        ok &= worst_session <= run.ussd_session_max_failures
        lines.append(
            f"USSD session tries {run.ussd_session_max_failures}: worst session had {worst_session} PINs verified"
        )
    else:
        worst_client = max((_max_in_window(t, window) for t in failures_by_client.values()), default=0)
        ok &= worst_client <= run.policy.limit
        lines.append(
            f"per-client budget {run.policy.limit}/{window:.0f}s: worst client verified {worst_client} failures"
        )
    # Per number: at most pin_max consecutive failed PINs ever verified without a password success.
    pin_failures: Counter[str] = Counter(o.phone for o in logins if o.method == "pin" and o.status == 401)
    worst_pin = max(pin_failures.values(), default=0)
    if pin_failures:
        held_pin = worst_pin <= run.pin_max_failures
        ok &= held_pin
        lines.append(f"PIN lock {run.pin_max_failures}: worst number had {worst_pin} PINs verified")
    password_failures: dict[str, list[float]] = defaultdict(list)
    for outcome in logins:
        if outcome.method == "password" and outcome.status == 401:
            password_failures[outcome.phone].append(outcome.finished)
    if password_failures:
        worst_account = max(_max_in_window(t, 3600) for t in password_failures.values())
        ok &= worst_account <= run.account_max_failures
        lines.append(f"per-number password budget {run.account_max_failures}/h: worst number {worst_account}")
    legit = [o for o in logins if o.kind == "legit"]
    if legit:
        legit_ok = sum(o.status == 200 for o in legit)
        ok &= legit_ok == len(legit)
        lines.append(f"real users: {legit_ok}/{len(legit)} signed in")
        for refused in (o for o in legit if o.status != 200):
            answer = f"{refused.status} {refused.code}" if refused.code else str(refused.status)
            lines.append(f"  refused real user {refused.phone} (client {refused.client}): {answer}")
    errors = sum(o.status == 0 or o.status >= 500 for o in logins)
    ok &= errors == 0
    lines.append(f"server errors or dropped connections: {errors}")
    attempts = run.login_attempts()
    if audited is None:
        lines.append("audit: not checked (no database to count the rows in: --database-url)")
    else:
        ok &= audited == attempts
        lines.append(f"audit: {audited} rows for {attempts} login requests")
    return Verdict(lines, ok, complete=audited is not None)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def count_audit_rows(database_url: str, run: Run, settle_seconds: float = 30.0) -> int:
    """Rows of this run in login_attempts (by request id), once the audit writer has caught up."""
    import asyncpg

    dsn = plain_dsn(database_url)
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + settle_seconds
        expected = run.login_attempts()
        while True:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM login_attempts WHERE request_id LIKE $1", f"lt-{run.run_id}-%"
            )
            if count >= expected or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _progress(run: Run, out: Any) -> None:
    """One live line, rewritten in place each second (only on a terminal: a log gets the summary)."""
    while True:
        await asyncio.sleep(1)
        out.write("\r" + progress_line(run) + "   ")
        out.flush()


def progress_line(run: Run) -> str:
    logins = [o for o in run.outcomes if o.kind in ("attack", "legit")]
    statuses = Counter(o.status for o in logins)
    shown = " ".join(f"{status}:{count}" for status, count in sorted(statuses.items()))
    verified = sum(o.status in (200, 401) for o in logins)
    p99 = _percentile([o.latency * 1000 for o in logins[-2000:]], 0.99)
    elapsed = time.perf_counter() - run.started
    return f"{elapsed:5.1f}s  requests {run.sent}  {shown or '-'}  verified {verified}  p99 {p99:.0f} ms"


async def execute(run: Run, database_url: str | None, out: Any = sys.stdout) -> Verdict:
    limits = httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency)
    async with httpx.AsyncClient(base_url=run.url, timeout=30, limits=limits) as client:
        try:
            health = await client.get("/health")
        except httpx.HTTPError as exc:
            raise LoadTestError(f"nothing answers at {run.url}: {exc}") from exc
        if health.status_code != 200:
            raise LoadTestError(f"{run.url}/health says {health.status_code}; not starting")
        forwarding = await probe_forwarding(client, run)
        if run.scenario == "ussd" and not run.ussd_token and database_url:
            run.ussd_token = await issue_ussd_credential(database_url, run)
        out.write(
            f"loadtest {run.scenario} against {run.url} for {run.duration:.0f}s "
            f"(run {run.run_id}, concurrency {run.concurrency}, simulated clients: "
            f"{'yes' if forwarding else 'no, X-Forwarded-For not trusted'})\n"
        )
        run.started = time.perf_counter()
        tty = getattr(out, "isatty", lambda: False)()
        progress = asyncio.ensure_future(_progress(run, out)) if tty else None
        try:
            await SCENARIO_FUNCTIONS[run.scenario](client, run, forwarding)
        finally:
            if progress is not None:
                progress.cancel()
                out.write("\n")
    audited = await count_audit_rows(database_url, run) if database_url else None
    logins = [o for o in run.outcomes if o.kind in ("attack", "legit")]
    statuses = Counter(o.status for o in logins)
    verified = sum(o.status in (200, 401) for o in logins)
    latencies = [o.latency * 1000 for o in logins]
    out.write(f"requests sent: {run.sent} ({run.login_attempts()} login attempts)\n")
    out.write("answers: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) + "\n")
    out.write(f"credentials verified: {verified}\n")
    out.write(f"latency p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms\n")
    out.write(f"audit rows written for the run: {audited if audited is not None else 'not checked'}\n")
    verdict = judge(run, audited)
    for line in verdict.lines:
        out.write(f"  {line}\n")
    out.write(f"verdict: {verdict.word} - ")
    if not verdict.ok:
        out.write("a limit did not hold, a real user was refused, or attempts are missing from the audit trail\n")
    elif verdict.complete:
        out.write("every limit held exactly and every attempt was audited\n")
    else:
        out.write("every limit held exactly; the audit trail was not checked\n")
    return verdict


def default_database_url(data_dir: Any) -> str | None:
    """Where to count audit rows: DATABASE_URL, else the embedded development server's socket."""
    import os
    from pathlib import Path

    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    socket_dir = Path(data_dir) / "postgres"
    if (socket_dir / "postmaster.pid").exists():
        return f"postgresql://postgres@/ladys_essence?host={socket_dir.resolve()}"
    return None


def run_loadtest(
    *,
    url: str,
    scenario: str,
    duration: float,
    concurrency: int,
    max_requests: int,
    database_url: str | None,
    allow_remote: bool,
    pin_max_failures: int,
    account_max_failures: int,
    verbose: bool = False,
    ussd_token: str | None = None,
) -> int:
    """Run one scenario; the exit status: 0 PASS, 1 FAIL, 2 INCOMPLETE (the audit trail not checked)."""
    check_target(url, allow_remote)
    run = Run(
        url=url.rstrip("/"),
        scenario=scenario,
        duration=duration,
        concurrency=concurrency,
        max_requests=max_requests,
        pin_max_failures=pin_max_failures,
        account_max_failures=account_max_failures,
        ussd_token=ussd_token,
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    verdict = asyncio.run(execute(run, database_url))
    return verdict.exit_status
