"""``ladys-essence audit worker``: the audit writer as a process of its own.

For deployments that run the API with ``AUDIT_WRITER_ENABLED=false`` (or want extra writers): the
worker joins the same consumer group as the in-process writers, so any mix of them is safe.
SIGTERM / SIGINT stop reading, finish the batch in hand, and exit.

Also runnable as ``python -m app.audit.pipeline.worker`` with settings from the environment (the fault tests
do this, so they kill -9 the real worker).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from sqlalchemy.ext.asyncio import create_async_engine

from app.audit.pipeline.metrics import shared_metrics
from app.audit.pipeline.writer import AuditWriter
from app.core.gc import freeze_startup_heap
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import ConfigError, Settings, asyncpg_url

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, *, consumer_name: str | None = None, metrics_port: int | None = None) -> None:
    """Run one audit writer until SIGTERM or SIGINT, then drain and return.

    Needs ``DATABASE_URL`` and ``REDIS_URL`` resolved: a worker must share the API's Redis, which an
    embedded server of its own would not be. ``metrics_port`` serves Prometheus metrics over HTTP,
    since this process has no API to carry ``/metrics``.
    """
    if not settings.database_url or not settings.redis_url:
        raise ConfigError("the audit worker needs DATABASE_URL and REDIS_URL (the API's servers)")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host)
    asyncio.run(_work(settings, consumer_name))


async def _work(settings: Settings, consumer_name: str | None) -> None:
    assert settings.database_url
    redis = create_redis(settings)
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=2, max_overflow=2)
    writer = AuditWriter(
        redis,
        KeySpace(settings.redis_key_prefix, settings.redis_shards),
        engine,
        settings,
        shared_metrics(),
        consumer_name,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, writer.request_stop)
    logger.info("audit worker %s: writing to %s", writer.consumer, settings.database_url.rsplit("@", 1)[-1])
    freeze_startup_heap()
    try:
        await writer.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    import os

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    run_worker(Settings.from_env(), consumer_name=os.environ.get("AUDIT_CONSUMER_NAME") or None)
