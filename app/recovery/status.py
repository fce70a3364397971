"""Whether SMS codes can be sent now, for ``/health`` and ``/metrics``.

The global daily budget spent is not an outage: the app keeps serving and recovery goes by USSD,
so the check stays ``ok`` (a failing check would take the host out of its load balancer) and says
``sending: false`` with the budget left; the gauge ``ladys_essence_auth_sms_daily_budget_left`` shows
the same to monitoring.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge

from app.core.prometheus import NAMESPACE
from app.core.redis import RedisClient
from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter

DAY_MS = 24 * 3_600_000

SMS_BUDGET_LEFT = Gauge(
    "sms_daily_budget_left",
    "SMS requests left in the global daily budget (SMS_DAILY_BUDGET); 0: no SMS is sent, recovery goes by USSD.",
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)


def sms_check(redis: RedisClient, limiter: LoginLimiter, settings: Settings) -> Callable[[], Awaitable[dict[str, Any]]]:
    key = limiter.budget_key("sms_global", "all")

    async def sms() -> dict[str, Any]:
        if settings.sms_channel == "off":
            return {"provider": "off", "sending": False}
        used = int(await redis.zcount(key, round(time.time() * 1000) - DAY_MS, "+inf"))
        left = max(0, settings.sms_daily_budget - used)
        SMS_BUDGET_LEFT.set(left)
        return {"provider": settings.sms_channel, "sending": left > 0, "daily_budget_left": left}

    return sms
