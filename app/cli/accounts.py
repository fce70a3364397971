"""``ladys-essence accounts relay``: the account-event relay as a process of its own.

The API processes run one each (``ACCOUNT_EVENTS_RELAY_ENABLED``); this command is for deployments
that turn those off, or for publishing what is pending from a script (``--once``). Any number of
relays may run: they take turns on one Postgres advisory lock (app/events/relay.py).
"""

from __future__ import annotations

import asyncio
import signal

import click

from app.core.cli import load_settings
from app.core.settings import Settings


@click.group(help="Account events: publish the outbox to the Redis stream the platform consumes.")
def accounts() -> None:
    pass


@accounts.command("relay", help="Publish account events until SIGTERM/SIGINT; --once: what is pending, then exit.")
@click.option("--once", is_flag=True, help="Publish every pending event, prune old published ones, and exit.")
def relay(once: bool) -> None:
    settings = load_settings()
    if not settings.database_url or not settings.redis_url:
        raise click.ClickException("the relay needs DATABASE_URL and REDIS_URL (the API's servers)")
    published = asyncio.run(_relay(settings, once))
    if once:
        click.echo(f"published {published} account events")


async def _relay(settings: Settings, once: bool) -> int:
    from app.core.redis import create_redis
    from app.core.redis_keys import KeySpace
    from app.db.config import sqlalchemy_config
    from app.events.relay import AccountEventRelay

    redis = create_redis(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    relay = AccountEventRelay(redis, engine, KeySpace(settings.redis_key_prefix, settings.redis_shards), settings)
    try:
        if once:
            published = await relay.publish_pending()
            await relay.prune()
            return published
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, relay.request_stop)
        await relay.start()
        return 0
    finally:
        await redis.aclose()
        await engine.dispose()
