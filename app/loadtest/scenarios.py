"""The attacks, as plans of requests that any traffic generator can send.

A scenario knows what to send, never how: the built-in driver (``runner.py``, asyncio + httpx) and
the locustfile (gevent) both ask it for the next :class:`Planned` request and send it with
:func:`request_headers`. A scenario never looks at answers; the verdict reads what the server did
from the audit trail. Adding a scenario is one class and one entry in :data:`SCENARIOS`.

Every audited request carries ``X-Request-ID: lt-<run>-[<generator>.]<n>``, ``n`` counting from 1
in each generator process, so the verdict can tell a missing audit row from one never sent. Setup
calls the audit trail does not record (account registration) are ``lt-<run>-s<n>``. Simulated
clients are addresses of 198.18.0.0/15 (the benchmarking range) sent as ``X-Forwarded-For``, which
the server believes only when ``TRUSTED_PROXIES`` covers the generator.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import random
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

COMMON_PIN = "2580"  # the classic keypad column; the service refuses it as a new PIN
WRONG_PASSWORD = "Wrong-Password-77"  # noqa: S105 - the guess an attacker sends
USER_AGENT = "ladys-essence-loadtest"
LEGIT = "legit"  # the kind of a real user's request; its User-Agent ends in /legit
SETUP_STATUSES = (201, 409)  # a registration that made the account, or found it made


class ScenarioError(Exception):
    """The scenario cannot run against this target as configured (not a verdict)."""


@dataclass(frozen=True)
class Planned:
    """One request to send. ``audited``: the server writes one ``login_attempts`` row for it."""

    path: str
    body: dict[str, Any]
    kind: str  # "attack" | "legit" | "setup" | "probe"
    label: str  # the name generators group answers by
    address: str | None = None  # the simulated client, as X-Forwarded-For
    bearer: str | None = None  # the USSD gateway's credential
    audited: bool = True


@dataclass
class Generator:
    """One process sending a run's traffic: its part of the request ids and its simulated addresses."""

    run_id: str
    scenario: str
    name: str = ""  # "" for a single generator; distinct per locust process
    numbered: int = 0  # audited requests numbered so far
    _setup_calls: int = 0
    _lock: Any = field(default_factory=threading.Lock)
    _addresses: Any = None

    def request_id(self, planned: Planned) -> str:
        with self._lock:  # locust's greenlets and the driver's tasks share one counter per process
            if not planned.audited:
                self._setup_calls += 1
                return f"lt-{self.run_id}-s{self._setup_calls}"
            self.numbered += 1
            number = self.numbered
        return f"lt-{self.run_id}-{self.name}.{number}" if self.name else f"lt-{self.run_id}-{number}"

    def fresh_address(self) -> str:
        if self._addresses is None:
            network = ipaddress.ip_network("198.18.0.0/15")
            self._addresses = itertools.count(random.randrange(network.num_addresses))  # noqa: S311 - labels
        size = 2**17 - 2
        return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.1")) + next(self._addresses) % size))

    def seed(self) -> int:
        """A number of this run and generator: the phone numbers it registers differ from other runs'."""
        return int(hashlib.sha256(f"{self.run_id}/{self.name}".encode()).hexdigest()[:8], 16)


def request_headers(generator: Generator, planned: Planned) -> dict[str, str]:
    # The User-Agent names the scenario and the kind: the verdict finds real users' rows by ".../legit".
    agent = f"{USER_AGENT}/{generator.scenario}/{planned.kind}"
    headers = {"X-Request-ID": generator.request_id(planned), "User-Agent": agent}
    if planned.address:
        headers["X-Forwarded-For"] = planned.address
    if planned.bearer:
        headers["Authorization"] = f"Bearer {planned.bearer}"
    return headers


def phone(index: int) -> str:
    """Distinct valid Rwandan mobile numbers, unlikely to belong to real users."""
    return f"+25078{9_000_000 + index % 1_000_000:07d}"


def probe_requests(generator: Generator) -> list[Planned]:
    """Two wrong passwords from two fresh simulated clients: does the server key them apart?"""
    body = {"phone_number": phone(random.randrange(10**6)), "password": WRONG_PASSWORD}  # noqa: S311
    return [Planned("/api/auth/login", body, "probe", "probe", generator.fresh_address()) for _ in range(2)]


def forwarding_trusted(answers: list[tuple[int, str]]) -> bool:
    """From the probe's (status, RateLimit header) pairs: two fresh clients had budgets of their own.

    Untrusted, both requests are this machine's: the second sees one try fewer, or both are refused
    once this machine's budget is spent.
    """
    remaining = [header.split("r=")[1].split(";")[0] if "r=" in header else None for _, header in answers]
    return all(status != 429 for status, _ in answers) and remaining[0] is not None and remaining[0] == remaining[1]


def _real_pin() -> str:
    """A PIN the service accepts (4 digits, not weak), never the attackers' COMMON_PIN."""
    from app.credentials.passwords import pin_problem

    while True:
        pin = f"{secrets.randbelow(10_000):04d}"
        if pin != COMMON_PIN and pin_problem(pin) is None:
            return pin


class Scenario:
    """A plan of requests. ``setup()`` is sent once per generator (each must answer 201 or 409)."""

    name: ClassVar[str]
    needs_forwarding: ClassVar[bool] = True
    needs_gateway: ClassVar[bool] = False

    def __init__(self, generator: Generator, *, forwarding: bool, ussd_token: str | None = None) -> None:
        if self.needs_forwarding and not forwarding:
            raise ScenarioError(
                f"{self.name} simulates many clients: start the server with TRUSTED_PROXIES covering this machine"
            )
        if self.needs_gateway and not ussd_token:
            raise ScenarioError("the ussd scenario needs a gateway credential: --ussd-token, or --database-url")
        self.generator = generator
        self.forwarding = forwarding
        self.ussd_token = ussd_token
        self.base = generator.seed() % 10**6

    def setup(self) -> list[Planned]:
        return []

    def next(self) -> Planned:
        raise NotImplementedError

    def _login(self, kind: str, address: str | None, number: str, secret: dict[str, str]) -> Planned:
        return Planned("/api/auth/login", {"phone_number": number, **secret}, kind, f"login {kind}", address)

    def _register(self, number: str, password: str) -> Planned:
        body = {"name": "Load Test", "phone_number": number, "password": password}
        return Planned("/api/auth/register", body, "setup", "register", self.generator.fresh_address(), audited=False)


class BruteForce(Scenario):
    """Many concurrent wrong passwords against one account, from one client."""

    name = "brute-force"
    needs_forwarding = False

    def __init__(self, generator: Generator, **options: Any) -> None:
        super().__init__(generator, **options)
        self.victim = phone(self.base)
        self.attacker = generator.fresh_address() if self.forwarding else None

    def setup(self) -> list[Planned]:
        return [self._register(self.victim, f"Real-{secrets.token_urlsafe(12)}")]

    def next(self) -> Planned:
        return self._login("attack", self.attacker, self.victim, {"password": WRONG_PASSWORD})


class Spray(Scenario):
    """One common PIN across many numbers, from many clients."""

    name = "spray"

    def __init__(self, generator: Generator, **options: Any) -> None:
        super().__init__(generator, **options)
        self.clients = [generator.fresh_address() for _ in range(64)]

    def next(self) -> Planned:
        number = phone(self.base + random.randrange(500))  # noqa: S311
        return self._login("attack", random.choice(self.clients), number, {"pin": COMMON_PIN})  # noqa: S311


class Stuffing(Scenario):
    """Leaked (phone, password) pairs tried from many clients."""

    name = "stuffing"

    def next(self) -> Planned:
        index = random.randrange(2000)  # noqa: S311
        secret = {"password": f"Leaked-{index}-{self.generator.run_id}"}
        return self._login("attack", self.generator.fresh_address(), phone(self.base + index), secret)


class Mixed(Scenario):
    """Real users keep signing in while a brute-force and a spray run."""

    name = "mixed"

    def __init__(self, generator: Generator, **options: Any) -> None:
        super().__init__(generator, **options)
        self.users = [(phone(self.base + 700 + i), f"Real-{secrets.token_urlsafe(12)}") for i in range(8)]
        self.attacker = generator.fresh_address()
        self.sprayers = [generator.fresh_address() for _ in range(20)]

    def setup(self) -> list[Planned]:
        return [self._register(number, password) for number, password in self.users]

    def next(self) -> Planned:
        roll = random.random()  # noqa: S311
        if roll < 0.2:
            number, password = random.choice(self.users)  # noqa: S311
            return self._login(LEGIT, self.generator.fresh_address(), number, {"password": password})
        if roll < 0.6:
            return self._login("attack", self.attacker, self.users[0][0], {"password": WRONG_PASSWORD})
        number = phone(self.base + random.randrange(300))  # noqa: S311
        return self._login("attack", random.choice(self.sprayers), number, {"pin": COMMON_PIN})  # noqa: S311


class Ussd(Scenario):
    """Feature phones through one gateway: wrong PINs on many numbers while real callers sign in.

    Every call comes from the gateway's one address with its credential (never X-Forwarded-For),
    so only the per-number PIN lock and the per-session tries stand between an attacker and a PIN.
    """

    name = "ussd"
    needs_forwarding = False
    needs_gateway = True

    def __init__(self, generator: Generator, **options: Any) -> None:
        super().__init__(generator, **options)
        self.callers = [(phone(self.base + 800 + i), _real_pin()) for i in range(8)]
        self.targets = [phone(self.base + 2000 + i) for i in range(150)]  # numbers the attack guesses at
        self.prefix = f"{generator.run_id[:6]}{generator.name}"

    def _call(self, path: str, body: dict[str, Any], kind: str, label: str) -> Planned:
        return Planned(path, body, kind, label, bearer=self.ussd_token)

    def setup(self) -> list[Planned]:
        return [
            self._call(
                "/api/ussd/register",
                {
                    "phone_number": number,
                    "name": f"Caller {i}",
                    "user_type": "adolescent",
                    "pin": pin,
                    "session_id": f"reg-{self.prefix}-{i}",
                },
                "setup",
                "ussd register",
            )
            for i, (number, pin) in enumerate(self.callers)
        ]

    def next(self) -> Planned:
        if random.random() < 0.2:  # noqa: S311
            number, pin = random.choice(self.callers)  # noqa: S311
            session = f"real-{secrets.token_hex(4)}"
            return self._call(
                "/api/ussd/verify-pin", {"phone_number": number, "pin": pin, "session_id": session}, LEGIT, "ussd legit"
            )
        session = f"atk-{self.prefix}-{random.randrange(60)}"  # noqa: S311 - reused far past their tries
        body = {"phone_number": random.choice(self.targets), "pin": COMMON_PIN, "session_id": session}  # noqa: S311
        return self._call("/api/ussd/verify-pin", body, "attack", "ussd attack")


class SmsPumping(Scenario):
    """Recovery codes by SMS, the way toll fraud asks for them (app/recovery).

    One number asked for again and again from fresh addresses, one address sweeping a range of
    numbers, and many addresses sweeping the same range (one prefix of 1,000). Some numbers have
    accounts (a code sent to them is a message paid for); the verdict counts the ``code_sent`` rows
    against the SMS budgets.
    """

    name = "sms-pumping"

    def __init__(self, generator: Generator, **options: Any) -> None:
        super().__init__(generator, **options)
        start = self.base - self.base % 1000  # one prefix: the last three digits sweep it
        self.range = [phone(start + i) for i in range(1000)]
        self.owners = [(self.range[i * 50], f"Real-{secrets.token_urlsafe(12)}") for i in range(20)]
        self.sweeper = generator.fresh_address()

    def setup(self) -> list[Planned]:
        return [self._register(number, password) for number, password in self.owners]

    def next(self) -> Planned:
        roll = random.random()  # noqa: S311
        if roll < 0.3:
            number, address = self.owners[0][0], self.generator.fresh_address()
        elif roll < 0.6:
            number, address = random.choice(self.range), self.sweeper  # noqa: S311
        else:
            number, address = random.choice(self.range), self.generator.fresh_address()  # noqa: S311
        return Planned("/api/auth/recovery/start", {"phone_number": number}, "attack", "sms pumping", address)


SCENARIOS: dict[str, type[Scenario]] = {
    scenario.name: scenario for scenario in (BruteForce, Spray, Stuffing, Mixed, Ussd, SmsPumping)
}
"""Every scenario, by name: the CLI, the locustfile and the verdict read this one table."""
