"""The single-server Redis client as the app builds it, on the real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import uvloop
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.redis import TcpConnection, TlsConnection, create_cluster, create_redis
from app.core.settings import Settings


def test_a_server_that_hangs_up_before_the_first_command_is_a_connection_error(settings: Settings) -> None:
    """uvloop (what uvicorn runs) raises RuntimeError writing to a closed transport; the limiter must
    read that as a lost Redis (503, fail closed), not as a bug (500)."""
    if not (settings.redis_url or "").startswith("redis://"):
        pytest.skip("a TCP Redis URL")

    async def write_after_hang_up() -> None:
        client = create_redis(msgspec.structs.replace(settings, redis_cluster=False))
        assert isinstance(client, Redis)
        try:
            assert client.connection_pool.connection_class is TcpConnection
            await assert_a_write_after_hang_up_is_a_connection_error(await client.connection_pool.get_connection())
        finally:
            await client.aclose()

    uvloop.run(write_after_hang_up())


async def assert_a_write_after_hang_up_is_a_connection_error(connection: Any) -> None:
    """Redis hangs up on ``connection`` (the loop closes the transport); writing then must be a
    ``ConnectionError`` (tests/ratelimit/test_redis_cluster.py uses it on a cluster node too)."""
    if not connection.is_connected:
        await connection.connect()
    assert connection._writer is not None
    connection._writer.transport.abort()
    await asyncio.sleep(0.01)
    with pytest.raises(RedisConnectionError):
        await connection.send_command("PING")


def test_a_tls_cluster_keeps_its_tls_connections() -> None:
    """rediss:// seeds build TLS node connections (with their ssl_* options), guarded like the TCP ones."""
    cluster = create_cluster("rediss://127.0.0.1:7000/0")
    assert cluster.connection_kwargs["connection_class"] is TlsConnection
    seed = next(iter(cluster.nodes_manager.startup_nodes.values()))
    assert seed.connection_class is TlsConnection
    connection = seed.connection_class(**seed.connection_kwargs)  # what a node's pool builds; no server needed
    assert isinstance(connection, TlsConnection)
