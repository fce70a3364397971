"""The built-in driver: one command, one machine, asyncio + httpx, ends when told.

The run's length is enforced here, not left to the HTTP client: every phase (setup, load, drain,
closing, audit settle) has its own deadline, and a watchdog thread ends the process if the event
loop itself stops turning. Each worker owns one connection (its own client), so no request ever
waits in a shared pool: with one pool of 64 connections, httpcore 1.0.9 re-assigns every queued
request on each pass (O(connections^2) per pass, several passes per request) and the driver spent
its core on that bookkeeping instead of sending (docs/loadtest.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from app.core.postgres import plain_dsn
from app.loadtest.report import Answer, live_line, plot, summary_table
from app.loadtest.scenarios import (
    SCENARIOS,
    SETUP_STATUSES,
    Generator,
    Planned,
    Scenario,
    ScenarioError,
    forwarding_trusted,
    probe_requests,
    request_headers,
)
from app.loadtest.verdict import EXIT_INCOMPLETE, Budgets, Verdict, incomplete, verdict_of_run

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SETUP_SECONDS = 20.0  # health, probe, credential and registrations together
CLOSE_SECONDS = 5.0


class LoadTestError(Exception):
    """The run could not start as asked (usage, setup refused): exit 1, not a verdict."""


class TargetUnavailable(Exception):
    """The target did not answer (refused, reset, timed out): the run ends INCOMPLETE (exit 2)."""


@dataclass
class Run:
    url: str
    scenario: str
    duration: float
    concurrency: int
    max_requests: int
    request_timeout: float = 10.0
    settle_seconds: float = 30.0
    ussd_token: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    answers: list[Answer] = field(default_factory=list)
    uncertain: set[str] = field(default_factory=set)
    started: float = 0.0
    generator: Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = Generator(self.run_id, self.scenario)

    def hard_limit(self) -> float:
        """Seconds after which the process ends whatever happens: every phase's deadline, plus slack."""
        return SETUP_SECONDS + self.duration + self.request_timeout + 2 * CLOSE_SECONDS + self.settle_seconds + 15


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname or ""
    if not allow_remote and host not in LOOPBACK and not host.startswith("127."):
        raise LoadTestError(f"{host} is not this machine; pass --allow-remote to load-test it deliberately")


def _timeout(run: Run) -> httpx.Timeout:
    return httpx.Timeout(run.request_timeout, connect=min(5.0, run.request_timeout), pool=1.0)


async def _send(client: httpx.AsyncClient, run: Run, planned: Planned) -> httpx.Response:
    return await client.post(planned.path, json=planned.body, headers=request_headers(run.generator, planned))


async def _setup(run: Run, database_url: str | None, out: TextIO) -> Scenario:
    """Health, the forwarding probe, the gateway credential and the scenario's registrations."""
    timeout = httpx.Timeout(5.0)
    async with httpx.AsyncClient(base_url=run.url, timeout=timeout) as client:
        try:
            health = await client.get("/health")
        except httpx.HTTPError as exc:
            raise TargetUnavailable(f"nothing answers at {run.url}: {type(exc).__name__} {exc}".strip()) from exc
        if health.status_code != 200:
            raise TargetUnavailable(f"{run.url}/health says {health.status_code}; not starting")
        answers = []
        for planned in probe_requests(run.generator):
            try:
                response = await _send(client, run, planned)
            except httpx.HTTPError as exc:
                raise TargetUnavailable(f"{run.url} stopped answering: {type(exc).__name__}") from exc
            answers.append((response.status_code, response.headers.get("ratelimit", "")))
        forwarding = forwarding_trusted(answers)
        if SCENARIOS[run.scenario].needs_gateway and not run.ussd_token and database_url:
            run.ussd_token = await issue_ussd_credential(database_url, run.run_id)
        try:
            scenario = SCENARIOS[run.scenario](run.generator, forwarding=forwarding, ussd_token=run.ussd_token)
        except ScenarioError as exc:
            raise LoadTestError(str(exc)) from exc
        for planned in scenario.setup():
            try:
                response = await _send(client, run, planned)
            except httpx.HTTPError as exc:
                raise TargetUnavailable(f"{run.url} stopped answering during setup: {type(exc).__name__}") from exc
            if response.status_code not in SETUP_STATUSES:
                raise LoadTestError(f"{planned.label} refused: {response.status_code} {response.text[:200]}")
    out.write(
        f"loadtest {run.scenario} against {run.url} for {run.duration:g}s (run {run.run_id}, concurrency "
        f"{run.concurrency}, simulated clients: {'yes' if forwarding else 'no, X-Forwarded-For not trusted'})\n"
    )
    return scenario


async def _worker(run: Run, scenario: Scenario, stop: asyncio.Event) -> None:
    """Send one request at a time on this worker's own connection until told to stop."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=run.url, timeout=_timeout(run), limits=limits) as client:
        while not stop.is_set() and run.generator.numbered < run.max_requests:
            planned = scenario.next()
            headers = request_headers(run.generator, planned)
            begun = time.perf_counter()
            status, error = 0, ""
            try:
                response = await client.post(planned.path, json=planned.body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            except asyncio.CancelledError:
                run.uncertain.add(headers["X-Request-ID"])  # cut off at the drain's end: reached the server?
                raise
            now = time.perf_counter()
            run.answers.append(Answer(planned.label, status, now - run.started, now - begun, error))
            if error:
                await asyncio.sleep(0.05)  # a refusing server answers at once: do not spin on it


async def _live(run: Run, out: TextIO) -> None:
    while True:
        await asyncio.sleep(1)
        out.write("\r" + live_line(run.answers, run.started) + "   ")
        out.flush()


async def _load(run: Run, scenario: Scenario, out: TextIO) -> None:
    """``duration`` seconds of load, then in-flight requests get ``request_timeout`` to finish."""
    stop = asyncio.Event()
    run.started = time.perf_counter()
    workers = [asyncio.ensure_future(_worker(run, scenario, stop)) for _ in range(run.concurrency)]
    live = asyncio.ensure_future(_live(run, out)) if getattr(out, "isatty", lambda: False)() else None
    try:
        await asyncio.wait(workers, timeout=run.duration)
        stop.set()
        _, cut_off = await asyncio.wait(workers, timeout=run.request_timeout + CLOSE_SECONDS)
        for worker in cut_off:
            worker.cancel()
        if cut_off:
            await asyncio.wait(cut_off, timeout=CLOSE_SECONDS)
    finally:
        if live is not None:
            live.cancel()
            out.write("\n")
    for worker in workers:
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            raise worker.exception()  # type: ignore[misc]


async def issue_ussd_credential(database_url: str, run_id: str) -> str:
    """A gateway credential for this run, written straight into the target's database."""
    import asyncpg

    from app.platform.credentials import new_token, token_digest

    token = new_token()
    conn = await asyncpg.connect(plain_dsn(database_url), timeout=10)
    try:
        await conn.execute(
            "INSERT INTO service_credentials (name, token_hash, scopes, created_at) VALUES ($1, $2, $3, now())",
            f"loadtest-{run_id}",
            token_digest(token),
            ["ussd"],
        )
    finally:
        await conn.close()
    return token


async def _drive(run: Run, database_url: str | None, out: TextIO) -> None:
    try:
        async with asyncio.timeout(SETUP_SECONDS):
            scenario = await _setup(run, database_url, out)
    except TimeoutError as exc:
        raise TargetUnavailable(f"{run.url} did not finish the run's setup within {SETUP_SECONDS:g}s") from exc
    await _load(run, scenario, out)


def _watchdog(seconds: float, out: TextIO) -> threading.Timer:
    """Ends the process if the run is still going ``seconds`` from now, even with the event loop stuck."""

    def stop() -> None:
        out.write(f"\nloadtest: still running {seconds:.0f}s after the start; stopping. verdict: INCOMPLETE\n")
        out.flush()
        os._exit(EXIT_INCOMPLETE)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    return timer


def execute(
    run: Run,
    database_url: str | None,
    *,
    budgets: Budgets,
    out: TextIO = sys.stdout,
    report_dir: Path | None = None,
) -> Verdict:
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    watchdog = _watchdog(run.hard_limit(), out)
    try:
        try:
            asyncio.run(_drive(run, database_url, out))
        except TargetUnavailable as exc:
            verdict = incomplete(str(exc))
            out.write(f"loadtest: {exc}\n" + verdict.render())
            return verdict
        out.write(summary_table(run.answers))
        if report_dir is not None:
            path = plot(run.answers, report_dir / f"loadtest-{run.run_id}.png", f"{run.scenario} run {run.run_id}")
            out.write(f"plot: {path}\n")
        legit_refused = sum(a.label.endswith("legit") and a.status != 200 for a in run.answers)
        errors = sum(a.status == 0 or a.status >= 500 for a in run.answers)
        client_lines = [f"server errors or no answer: {errors}"]
        if legit_refused:
            client_lines.append(f"real users refused (as answered): {legit_refused}")
        verdict = verdict_of_run(
            database_url,
            run.run_id,
            since=since,
            budgets=budgets,
            expected=run.generator.numbered,
            settle_seconds=run.settle_seconds,
            client_lines=client_lines,
            client_ok=errors == 0 and legit_refused == 0,
            uncertain=run.uncertain,
        )
        out.write(f"run {run.run_id}: {run.generator.numbered} audited requests sent\n" + verdict.render())
        return verdict
    finally:
        watchdog.cancel()


def default_database_url(data_dir: Any) -> str | None:
    """Where to read the audit trail: DATABASE_URL, else the embedded development server's socket."""
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
    budgets: Budgets,
    request_timeout: float = 10.0,
    settle_seconds: float = 30.0,
    report_dir: Path | None = None,
    verbose: bool = False,
    ussd_token: str | None = None,
) -> int:
    """Run one scenario; the exit status: 0 PASS, 1 FAIL, 2 INCOMPLETE."""
    check_target(url, allow_remote)
    run = Run(
        url=url.rstrip("/"),
        scenario=scenario,
        duration=duration,
        concurrency=concurrency,
        max_requests=max_requests,
        request_timeout=request_timeout,
        settle_seconds=settle_seconds,
        ussd_token=ussd_token,
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    with contextlib.suppress(BrokenPipeError):
        return execute(run, database_url, budgets=budgets, report_dir=report_dir).exit_status
    return EXIT_INCOMPLETE
