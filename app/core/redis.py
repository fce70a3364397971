"""The Redis connection pool shared by the limiter, the audit publisher and health checks."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.core.settings import Settings

REDIS_POOL_SIZE = 64


def create_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise ValueError("redis_url is resolved before the app is built")
    # No silent retries: a command that may have run once must not run twice (audit appends),
    # and a dead Redis must be reported quickly (the limiter fails closed).
    # A blocking pool: a burst beyond max_connections waits briefly for a connection instead of
    # failing, which the limiter would have to turn into 503s during exactly the storms it is for.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_POOL_SIZE,
        timeout=1.0,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=15,
    )
    return Redis(connection_pool=pool)
