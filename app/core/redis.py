"""The Redis client shared by the limiter, the audit publisher and health checks.

One Redis, or with ``REDIS_CLUSTER=true`` a Redis Cluster whose seed node is ``REDIS_URL``. The
rest of the app holds a :data:`RedisClient` either way; the few places where the two differ (a
batch of script calls, a read over several audit streams, one script over several streams) ask
:func:`is_cluster`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeAlias, TypeGuard

from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.settings import Settings

REDIS_POOL_SIZE = 64
# A cluster node's pool does not block when full (redis-py raises MaxConnectionsError, a 503 for
# the limiter), so it gets more headroom than the single server's blocking pool.
CLUSTER_NODE_POOL_SIZE = 4 * REDIS_POOL_SIZE

RedisClient: TypeAlias = "Redis | RedisCluster"


def is_cluster(client: RedisClient) -> TypeGuard[RedisCluster]:
    return isinstance(client, RedisCluster)


def create_redis(settings: Settings) -> RedisClient:
    if not settings.redis_url:
        raise ValueError("redis_url is resolved before the app is built")
    if settings.redis_cluster:
        return create_cluster(settings.redis_url)
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
    pool.connection_class = GUARDED_CONNECTIONS.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)


class LostTransportIsConnectionError:
    """Mixed into a redis-py connection: a write to a transport closed under it is a ``ConnectionError``.

    When Redis dies between the TCP connect and the first command (``HELLO``), asyncio's own loop
    reports a lost connection, but uvloop (what uvicorn runs) raises ``RuntimeError: unable to
    perform operation on <TCPTransport closed=True>``. redis-py passes that through untouched, so
    the limiter answered 500 instead of failing closed with 503, and on a cluster redis-py's own
    slot-map refresh after a connection error never ran (docs/redis-cluster.md). Only that case is
    translated: a RuntimeError on a transport that is still open is a bug and stays one.
    """

    _writer: asyncio.StreamWriter | None

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        try:
            await super()._send_packed_command(command)  # type: ignore[misc]
        except RuntimeError as exc:
            if self._writer is None or not self._writer.transport.is_closing():
                raise
            where = getattr(self, "host", None) or getattr(self, "path", "redis")
            raise RedisConnectionError(f"Error writing to {where}: {exc}") from exc


class TcpConnection(LostTransportIsConnectionError, Connection):
    pass


class TlsConnection(LostTransportIsConnectionError, SSLConnection):
    pass


class UnixSocketConnection(LostTransportIsConnectionError, UnixDomainSocketConnection):
    pass


# What redis-py's from_url picks for a URL's scheme -> the same with the guard above.
GUARDED_CONNECTIONS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: TcpConnection,
    SSLConnection: TlsConnection,
    UnixDomainSocketConnection: UnixSocketConnection,
}


def create_cluster(seed_url: str) -> RedisCluster:
    """A cluster client that discovers the nodes from ``seed_url`` and never silently re-sends.

    No retries, as for one server: a command whose node died may have run, so it is reported, not
    re-sent. Redirections are a different matter: ``MOVED`` and ``ASK`` mean the node did not run
    the command, and redis-py follows them (and refreshes its slot map after a connection error).
    Every node's connections time out (2 s a command, 1 s a connect): a dead node is an error soon,
    never a wait.
    """
    cluster = RedisCluster.from_url(
        seed_url,
        max_connections=CLUSTER_NODE_POOL_SIZE,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=15,
    )
    # RedisCluster takes no connection class: the guarded twin of the one from_url chose (TCP, or
    # TLS for rediss://) goes on the seed node and on the keyword arguments every node discovered
    # later is built from (redis-py 8.1; tests/ratelimit/test_redis_cluster.py checks it holds).
    chosen = cluster.connection_kwargs.get("connection_class", Connection)
    guarded = GUARDED_CONNECTIONS.get(chosen, chosen)
    cluster.connection_kwargs["connection_class"] = guarded
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = guarded
    return cluster


class RedisNotPersistent(RuntimeError):
    """Production was pointed at a Redis that would lose its data on a restart."""


async def require_persistence(client: RedisClient) -> None:
    """Refuse a Redis (every node of a cluster) with ``appendonly no``.

    Without the append-only file a restart empties Redis: audit events not yet written to Postgres,
    every failure budget and PIN lock, the known-client exemptions and undelivered account events
    are gone (docs/redis-cluster.md). ``REDIS_PERSISTENCE_CHECK=off`` skips this, deliberately.
    """
    if is_cluster(client):
        nodes = client.get_primaries()
        answers: list[Any] = [await client.config_get("appendonly", target_nodes=node) for node in nodes]
    else:
        answers = [await client.config_get("appendonly")]
    for answer in answers:
        found = {(k.decode() if isinstance(k, bytes) else k): v for k, v in dict(answer).items()}
        value = found.get("appendonly")
        if isinstance(value, bytes):
            value = value.decode()
        if value != "yes":
            raise RedisNotPersistent(
                f"Redis runs with appendonly={value or 'unknown'}: a restart would lose audit events not yet "
                "in Postgres, every rate-limit budget and PIN lock, and undelivered account events. Turn on "
                "appendonly (docs/redis-cluster.md), or set REDIS_PERSISTENCE_CHECK=off to run without it."
            )
