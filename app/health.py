"""``GET /health``: the Flask-era shape plus a check of each dependency; ``GET /metrics`` for Prometheus.

Checks run at most once per ``CACHE_SECONDS`` and concurrent callers share one run, so a load
balancer polling hard (or a login storm with its health probes) cannot turn health checks into a
load on Postgres and Redis of their own; the answer is never older than that.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.core.metrics_access import require_metrics_token
from app.core.prometheus import NAMESPACE, scrape_registry

CHECK_TIMEOUT_SECONDS = 2.0
CACHE_SECONDS = 1.0

Check = Callable[[], Awaitable[Any]]


class Degraded(Exception):
    """The dependency answers, but too slowly for its users: ``reason`` says how."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


async def _timed(check: Check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        result: dict[str, Any] = {"status": "ok"}
        if isinstance(detail, dict):
            result.update(detail)
    except Degraded as degraded:
        result = {"status": "degraded", **degraded.detail, "reason": degraded.reason}
    except TimeoutError:
        result = {"status": "error", "error": "TimeoutError", "reason": f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"}
    except Exception as exc:
        result = {"status": "error", "error": type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


class HealthChecks:
    """The dependency checks, shared by concurrent callers and reused for ``CACHE_SECONDS``."""

    def __init__(self, checks: dict[str, Check]) -> None:
        self.checks = checks
        self._result: dict[str, dict[str, Any]] | None = None
        self._at = 0.0
        self._running: asyncio.Task[dict[str, dict[str, Any]]] | None = None

    async def _run(self) -> dict[str, dict[str, Any]]:
        results = await asyncio.gather(*(_timed(check) for check in self.checks.values()))
        self._result, self._at = dict(zip(self.checks, results, strict=True)), time.monotonic()
        return self._result

    async def current(self) -> dict[str, dict[str, Any]]:
        if self._result is not None and time.monotonic() - self._at < CACHE_SECONDS:
            return self._result
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)


def database_check(state: State, threshold_ms: int) -> Check:
    """What a sign-in needs first: a pooled connection and a read of ``users`` within ``threshold_ms``.
    A lock on the table (a migration, a stuck transaction) holds every sign-in; this sees it."""

    async def database() -> None:
        async with state.db_config.get_engine().connect() as conn:
            await conn.execute(text(f"SET LOCAL statement_timeout = {int(threshold_ms)}"))
            try:
                await conn.execute(text("SELECT id FROM users LIMIT 1"))
            except DBAPIError as exc:
                if "statement timeout" not in str(exc.orig):
                    raise
                await conn.rollback()
                raise Degraded(
                    f"sign-in path: reading users took over {threshold_ms} ms (a lock or an overload)"
                ) from exc

    return database


def audit_lag_check(backlog: Check, max_lag_seconds: float) -> Check:
    """The audit backlog, degraded once its oldest unwritten event is older than ``max_lag_seconds``."""

    async def audit() -> dict[str, Any]:
        detail: dict[str, Any] = await backlog()
        lag = float(detail.get("lag_seconds", 0.0))
        if lag > max_lag_seconds:
            raise Degraded(
                f"audit lag {lag:.1f} s is over {max_lag_seconds:g} s: the writer is behind or stopped", detail
            )
        return detail

    return audit


class HealthBody(msgspec.Struct):
    """``checks`` maps each dependency to ``{"status": "ok"|"degraded"|"error", "latency_ms": ..., ...}``
    (``reason`` when not ok); ``reasons`` lists what is wrong."""

    status: Literal["healthy", "unhealthy"]
    message: str
    timestamp: str
    checks: dict[str, dict[str, Any]]
    reasons: list[str] = msgspec.field(default_factory=list)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "/",
        summary="Liveness and dependency checks",
        cache_control=None,
        responses={503: ResponseSpec(HealthBody, description="A dependency is down", generate_examples=False)},
        operation_id="getHealth",
    )
    async def health(self, state: State) -> Response[HealthBody]:
        checks = await state.health_checks.current()
        healthy = all(check["status"] == "ok" for check in checks.values())
        reasons = [
            f"{name}: {check.get('reason') or check.get('error', check['status'])}"
            for name, check in checks.items()
            if check["status"] != "ok"
        ]
        body = HealthBody(
            status="healthy" if healthy else "unhealthy",
            message="Lady's Essence API is running" if healthy else "Lady's Essence API is degraded",
            timestamp=datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            checks=checks,
            reasons=reasons,
        )
        return Response(body, status_code=200 if healthy else 503)


class _OutboxBacklog:
    """The outbox backlog as the health check last measured it (at most ``CACHE_SECONDS`` ago)."""

    def __init__(self, check: dict[str, Any] | None) -> None:
        self.check = check or {}

    def collect(self) -> Any:
        if self.check.get("status") != "ok":
            return  # Postgres unreachable: no number rather than a wrong one (``/health`` says why)
        yield GaugeMetricFamily(
            f"{NAMESPACE}_account_events_unpublished",
            "Account events committed and not yet on the accounts stream (the outbox backlog).",
            value=self.check["unpublished"],
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_account_events_oldest_unpublished_seconds",
            "Age of the oldest account event not yet on the accounts stream, in seconds (0 when none).",
            value=self.check["oldest_seconds"],
        )


class MetricsController(Controller):
    """``GET /metrics``: Prometheus text for the whole instance, every worker merged; needs METRICS_TOKEN.

    Gauges measured at scrape time (the backlogs, the SMS budget) come from the health checks, run at
    most once per ``CACHE_SECONDS`` whatever the number of scrapers.
    """

    path = "/metrics"
    include_in_schema = False
    guards = [require_metrics_token]

    @get("/", cache_control=None)
    async def metrics(self, state: State) -> Response[bytes]:
        checks = await state.health_checks.current()
        registry = scrape_registry(_OutboxBacklog(checks.get("outbox")))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
