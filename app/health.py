"""``GET /health``: the Flask-era shape plus a check of each dependency."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy import text

CHECK_TIMEOUT_SECONDS = 2.0


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        result: dict[str, Any] = {"status": "ok"}
        if isinstance(detail, dict):
            result.update(detail)
    except Exception as exc:
        result = {"status": "error", "error": type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", summary="Liveness and dependency checks", cache_control=None)
    async def health(self, state: State) -> Response[dict[str, Any]]:
        async def database() -> None:
            async with state.db_config.get_engine().connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def redis() -> None:
            await state.redis.ping()

        checks = dict(zip(("database", "redis"), await asyncio.gather(_timed(database), _timed(redis)), strict=True))
        for name, probe in state.extra_health_checks.items():
            checks[name] = await _timed(probe)
        healthy = all(check["status"] == "ok" for check in checks.values())
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "message": "Lady's Essence API is running" if healthy else "Lady's Essence API is degraded",
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "checks": checks,
        }
        return Response(body, status_code=200 if healthy else 503)
