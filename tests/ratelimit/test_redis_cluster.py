"""The limits and the audit pipeline on a real local Redis Cluster (``REDIS_CLUSTER=true``).

3 masters on free loopback ports (tests/cluster.py), and 3 more as replicas for the failover test.
Resharding and failover are reproduced, not simulated: a slot is migrated with CLUSTER SETSLOT /
MIGRATE while the limiter holds a stale slot map, and a master is SIGKILLed during a burst.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import uvloop
from redis.asyncio.cluster import RedisCluster
from sqlalchemy.ext.asyncio import create_async_engine

from app.audit.pipeline.metrics import AuditMetrics, unwritten_events
from app.audit.pipeline.publisher import AuditPublisher
from app.audit.pipeline.writer import AuditWriter
from app.core.errors import LimiterUnavailable
from app.core.redis import TcpConnection, create_cluster, create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings, asyncpg_url
from app.ratelimit.limiter import LoginLimiter
from tests.audit.pipeline import test_faults as test_audit_faults
from tests.cluster import LocalCluster, local_cluster
from tests.core.test_redis import assert_a_write_after_hang_up_is_a_connection_error
from tests.factories import login_event
from tests.helpers import STRONG_PASSWORD
from tests.servers import api_server

pytestmark = pytest.mark.slow
WRONG = "Wrong-Password-77"
HOT_PHONE, COLD_PHONE = "+250788640640", "+250788650650"  # as stored; the burst types them national


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), masters=3) as running:
        yield running


@pytest.fixture
def on_cluster(settings: Settings, cluster: LocalCluster) -> Settings:
    return msgspec.structs.replace(settings, redis_url=cluster.seed_url, redis_cluster=True)


@pytest.fixture
async def redis(on_cluster: Settings) -> AsyncIterator[RedisCluster]:
    client = create_redis(on_cluster)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


def node_id(cluster: LocalCluster, port: int) -> str:
    with next(n for n in cluster.nodes if n.port == port).client() as client:
        return str(client.execute_command("CLUSTER", "MYID"))


def owner_port(cluster: LocalCluster, key: str) -> int:
    return cluster.master_of_key(key).port


# ---- the transport: per-node pipelines, MOVED, ASK, NOSCRIPT -----------------------------------------


async def test_a_batch_spans_every_master_and_each_reply_is_its_own(
    on_cluster: Settings, redis: RedisCluster, cluster: LocalCluster
) -> None:
    limiter = LoginLimiter(redis, on_cluster)
    clients = [f"198.51.100.{n}" for n in range(60)]
    owners = {owner_port(cluster, limiter.keys.client(c, "login")) for c in clients}
    assert len(owners) == 3  # the shards spread over the masters
    # One turn of the event loop: one batch, one pipeline per master.
    first = await asyncio.gather(*(limiter.reserve_client(client) for client in clients))
    second = await asyncio.gather(*(limiter.reserve_client(client) for client in clients[:10]))
    assert [d.remaining for d in first] == [on_cluster.rate_limit_login_failures - 1] * 60
    assert [d.remaining for d in second] == [on_cluster.rate_limit_login_failures - 2] * 10


def migrate_slot(cluster: LocalCluster, key: str, target_port: int, *, finish: bool) -> None:
    """Move ``key``'s slot (and its keys) to ``target_port``'s master, as ``redis-cli --cluster reshard`` does."""
    source = cluster.master_of_key(key)
    target = next(n for n in cluster.masters if n.port == target_port)
    with source.client() as src, target.client() as dst:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(cluster, source.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(cluster, target.port))
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        if finish:
            for node in cluster.masters:
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(cluster, target.port))


def finish_migration(cluster: LocalCluster, key: str, target_port: int) -> None:
    with cluster.masters[0].client() as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
    for node in cluster.masters:
        with node.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(cluster, target_port))


async def test_a_resharded_slot_reroutes_its_calls_and_keeps_the_budget_exact(
    on_cluster: Settings, redis: RedisCluster, cluster: LocalCluster
) -> None:
    limiter = LoginLimiter(redis, on_cluster)
    moving, staying = "203.0.113.10", "203.0.113.77"
    moving_key = limiter.keys.client(moving, "login")
    for _ in range(2):
        await asyncio.gather(limiter.reserve_client(moving), limiter.reserve_client(staying))
    source = owner_port(cluster, moving_key)
    target = next(n.port for n in cluster.masters if n.port != source)

    # Mid-migration: the keys are on the target, the slot still belongs to the source -> ASK.
    migrate_slot(cluster, moving_key, target, finish=False)
    during = await asyncio.gather(limiter.reserve_client(moving), limiter.reserve_client(staying))
    assert [d.remaining for d in during] == [2, 2]
    # Done: the limiter's slot map still names the source -> MOVED, then the new owner.
    finish_migration(cluster, moving_key, target)
    assert owner_port(cluster, moving_key) == target
    after = await asyncio.gather(limiter.reserve_client(moving), limiter.reserve_client(staying))
    assert [d.remaining for d in after] == [1, 1]
    last = await asyncio.gather(*(limiter.reserve_client(moving) for _ in range(3)))
    assert [d.allowed for d in last] == [True, False, False]  # 5 in all, wherever the slot lives
    migrate_slot(cluster, moving_key, source, finish=True)  # leave the module's cluster as it was


async def test_noscript_on_one_node_reloads_there(
    on_cluster: Settings, redis: RedisCluster, cluster: LocalCluster
) -> None:
    limiter = LoginLimiter(redis, on_cluster)
    client = "192.0.2.200"
    await limiter.reserve_client(client)
    with cluster.master_of_key(limiter.keys.client(client, "login")).client() as node:
        node.script_flush()  # as a restarted master, or a replica just promoted
    decision = await limiter.reserve_client(client)
    assert decision.allowed and decision.remaining == on_cluster.rate_limit_login_failures - 2


async def test_an_unreachable_node_fails_only_its_own_calls(on_cluster: Settings, redis: RedisCluster) -> None:
    limiter = LoginLimiter(redis, on_cluster)
    clients = [f"198.51.100.{n}" for n in range(100, 130)]
    await asyncio.gather(*(limiter.reserve_client(c) for c in clients))
    # Point one node's connections at a closed port: its calls fail, the others answer.
    dead = redis.get_primaries()[0]
    dead.connection_kwargs["port"] = 1
    for connection in dead._connections:
        await connection.disconnect()
        connection.port = 1
    results = await asyncio.gather(*(limiter.reserve_client(c) for c in clients), return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    assert failed and all(isinstance(r, LimiterUnavailable) for r in failed)
    assert len(failed) < len(clients)
    assert all(r.remaining == on_cluster.rate_limit_login_failures - 2 for r in results if not isinstance(r, Exception))


def test_a_node_that_hangs_up_before_the_first_command_is_a_connection_error(cluster: LocalCluster) -> None:
    """uvloop (what uvicorn runs) raises RuntimeError writing to a closed transport; that must read as a lost node.

    Seen in the failover test: a connection made just before the master died, its HELLO written
    after the transport closed, answered the login with 500 instead of 503.
    """

    async def write_after_hang_up() -> None:
        client = create_cluster(cluster.seed_url)
        try:
            await client.initialize()
            assert {node.connection_class for node in client.get_nodes()} == {TcpConnection}
            await assert_a_write_after_hang_up_is_a_connection_error(client.get_primaries()[0].acquire_connection())
        finally:
            await client.aclose()

    uvloop.run(write_after_hang_up())


# ---- the login endpoint on a cluster, 2 workers --------------------------------------------------------


async def test_200_concurrent_wrong_passwords_over_2_workers_verify_exactly_5(
    on_cluster: Settings, cluster: LocalCluster, tmp_path: Path
) -> None:
    env = {"REDIS_CLUSTER": "true", "ARGON2_MEMORY_KIB": "19456", "ARGON2_TIME_COST": "2"}
    with api_server(on_cluster, tmp_path, redis_url=cluster.seed_url, workers=2, **env) as base:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            register = await http.post(
                "/api/auth/register",
                json={"name": "Keza Ineza", "phone_number": "0788 630 630", "password": STRONG_PASSWORD},
            )
            assert register.status_code == 201, register.text
            body = {"phone_number": "0788630630", "password": WRONG}
            responses = await asyncio.gather(*(http.post("/api/auth/login", json=body) for _ in range(200)))
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {401: 5, 429: 195}, statuses
        rows = await audited(on_cluster, ["+250788630630"], 200)
    assert len(rows) == 200 and len({row["event_id"] for row in rows}) == 200
    reasons = Counter(row["reason"] for row in rows)
    assert reasons == {"invalid_credentials": 5, "rate_limited": 195}


async def audited(settings: Settings, phones: list[str], expected: int, timeout: float = 30.0) -> list[Any]:
    assert settings.database_url
    conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch(
                "SELECT event_id, reason, phone_number FROM login_attempts WHERE phone_number = ANY($1)", phones
            )
            if len(rows) >= expected or time.monotonic() > deadline:
                return list(rows)
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def drained(settings: Settings, keys: KeySpace, timeout: float) -> int:
    """Wait up to ``timeout`` for the audit streams to empty; the entries still in them."""
    redis = create_redis(settings)
    try:
        deadline = time.monotonic() + timeout
        while (left := await unwritten_events(redis, keys)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return left
    finally:
        await redis.aclose()


# ---- the audit pipeline on a cluster ------------------------------------------------------------------


async def test_events_spread_over_the_masters_are_written_exactly_once_by_writers_sharing_the_group(
    on_cluster: Settings, redis: RedisCluster, cluster: LocalCluster, db: asyncpg.Connection
) -> None:
    assert on_cluster.database_url
    keys = KeySpace(on_cluster.redis_key_prefix, on_cluster.redis_shards)
    assert len({owner_port(cluster, stream) for stream in keys.audit_streams()}) == 3
    engine = create_async_engine(asyncpg_url(on_cluster.database_url), pool_size=4)
    metrics = AuditMetrics()
    publisher = AuditPublisher(redis, keys, engine, metrics)
    events = [login_event(n) for n in range(1500)]
    try:
        for index, event in enumerate(events):
            await publisher.publish(event, f"client-{index % 40}")
        assert metrics.value("events_published") == len(events)
        assert await unwritten_events(redis, keys) == len(events)
        again = settings_with(on_cluster, audit_batch_size=100)
        writers = [AuditWriter(redis, keys, engine, again, metrics) for _ in range(3)]
        await asyncio.gather(*(writer.run_until_drained(within_seconds=30) for writer in writers))
        # A redelivery (an acknowledgement lost after the commit) is absorbed, not stored twice.
        await test_audit_faults.add_to_streams(redis, keys, events[:50])
        await AuditWriter(redis, keys, engine, on_cluster, metrics).run_until_drained(within_seconds=20)
        backlog = await writers[0].backlog()
        assert backlog == {"stream_length": 0, "pending": 0, "lag_seconds": 0.0}
    finally:
        await redis.delete(*keys.audit_streams())
        await engine.dispose()
    await test_audit_faults.assert_stored_exactly_once(on_cluster.database_url.replace("+asyncpg", ""), events)
    assert metrics.value("events_duplicate") == 50


async def test_a_master_down_for_good_holds_up_only_its_own_streams(settings: Settings, tmp_path: Path) -> None:
    """No replica, full coverage not required: the other masters serve on, and the writer drains them."""
    with local_cluster(tmp_path / "partial", masters=3) as partial:
        for node in partial.masters:
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "no")
        own = settings_with(settings, redis_url=partial.seed_url, redis_cluster=True, audit_flush_ms=50)
        assert own.database_url
        keys = KeySpace(own.redis_key_prefix, own.redis_shards)
        redis = create_redis(own)
        engine = create_async_engine(asyncpg_url(own.database_url), pool_size=4)
        metrics = AuditMetrics()
        events = [login_event(n) for n in range(600)]
        clients = [f"client-{n % 40}" for n in range(len(events))]
        try:
            publisher = AuditPublisher(redis, keys, engine, metrics)
            for event, client in zip(events, clients, strict=True):
                await publisher.publish(event, client)
            # The seed node, the one the client discovered the cluster from (if it owns a stream).
            owners = [partial.master_of_key(stream) for stream in keys.audit_streams()]
            dead = partial.masters[0] if partial.masters[0] in owners else owners[0]
            lost = {stream for stream, owner in zip(keys.audit_streams(), owners, strict=True) if owner is dead}
            surviving = [stream for stream in keys.audit_streams() if stream not in lost]
            written = [
                e for e, c in zip(events, clients, strict=True) if keys.audit_stream(keys.shard_of(c)) not in lost
            ]
            assert 0 < len(written) < len(events)  # events on the dead master and on the others
            dead.kill()
            writer = AuditWriter(redis, keys, engine, own, metrics)
            writer.start()
            deadline = time.monotonic() + 30
            while sum([await redis.xlen(stream) for stream in surviving]):
                assert time.monotonic() < deadline, "the streams of the masters still up were not drained"
                await asyncio.sleep(0.1)
            await writer.stop()  # and it stops, with a master gone
        finally:
            await redis.aclose()
            await engine.dispose()
        await test_audit_faults.assert_stored_exactly_once(own.database_url.replace("+asyncpg", ""), written)


def settings_with(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, **changes)


async def test_writer_killed_mid_batch_loses_and_doubles_nothing(
    on_cluster: Settings, redis: RedisCluster, db: asyncpg.Connection, tmp_path: Path
) -> None:
    keys = KeySpace(on_cluster.redis_key_prefix, on_cluster.redis_shards)
    try:
        await test_audit_faults.test_writer_killed_mid_batch_loses_and_doubles_nothing(
            on_cluster,
            redis,  # type: ignore[arg-type]
            db,
            tmp_path,
        )
    finally:
        await redis.delete(*keys.audit_streams())


# ---- failover: the master holding a hot client's budget is killed during a burst ----------------------


async def until(condition: Any, tasks: list[asyncio.Future[None]], within: float) -> None:
    """Wait for ``condition`` while the burst runs; a failed burst task fails the test at once."""
    deadline = time.monotonic() + within
    while not condition():
        for task in tasks:
            if task.done():
                task.result()
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_failover_during_a_burst_fails_closed_and_keeps_the_budget_exact(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    hot, cold = "198.51.100.50", "198.51.100.51"
    hot_phone, cold_phone = "0788640640", "0788650650"
    with local_cluster(tmp_path / "failover", masters=3, replicas=1) as failover:
        own = settings_with(
            settings, redis_url=failover.seed_url, redis_cluster=True, audit_claim_idle_ms=1000, audit_flush_ms=50
        )
        keys = KeySpace(own.redis_key_prefix, own.redis_shards)
        hot_key, cold_key = keys.client(hot, "login"), keys.client(cold, "login")
        hot_master = failover.master_of_key(hot_key)
        # The hot client's budget, its phone's, and their audit streams on one master; the cold one elsewhere.
        assert failover.master_of_key(cold_key) is not hot_master
        env = {"REDIS_CLUSTER": "true", "TRUSTED_PROXIES": "127.0.0.1", "AUDIT_CLAIM_IDLE_MS": "1000"}
        statuses: dict[str, list[int]] = {hot: [], cold: []}
        with api_server(own, tmp_path, redis_url=failover.seed_url, **env) as base:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def guess(client: str, phone: str) -> int:
                    response = await http.post(
                        "/api/auth/login",
                        json={"phone_number": phone, "password": WRONG},
                        headers={"X-Forwarded-For": client},
                    )
                    assert response.status_code in (401, 429, 503), response.text
                    if response.status_code == 503:
                        assert response.json()["code"] == "rate_limiter_unavailable", response.text
                    statuses[client].append(response.status_code)
                    return response.status_code

                stop = asyncio.Event()

                async def burst(client: str, phone: str) -> None:
                    while not stop.is_set():
                        await guess(client, phone)

                tasks = [asyncio.ensure_future(burst(hot, hot_phone)) for _ in range(8)]
                tasks += [asyncio.ensure_future(burst(cold, cold_phone)) for _ in range(2)]
                try:
                    await until(lambda: 429 in statuses[hot], tasks, 20)  # the hot budget is spent
                    with hot_master.client() as node:  # a write on this connection, then wait for the replica
                        node.set(f"{own.redis_key_prefix}{{s{keys.shard_of(hot)}}}:sync", 1)
                        assert node.execute_command("WAIT", 1, 2000) == 1
                    before_kill = len(statuses[hot])
                    hot_master.kill()
                    promoted = await asyncio.to_thread(failover.wait_for_new_master, hot_master, hot_key)
                    seen = len(statuses[hot])
                    # The app's slot map catches up; the burst goes on, refused (not 503) by the new master.
                    await until(lambda: statuses[hot][seen:][-5:] == [429] * 5, tasks, 20)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                for task in tasks:
                    task.result()
                after_failover = [await guess(hot, hot_phone) for _ in range(5)]
                cold_after = await guess(cold, cold_phone)
                # While the API (and its writer) runs: its writer drains every stream, the promoted
                # replica's included. (Once the API stops, its writer reads no more: what it had not
                # read by then would wait in the streams for the next writer.)
                answered = len(statuses[hot]) + len(statuses[cold])
                rows = await audited(own, [HOT_PHONE, COLD_PHONE], answered, timeout=60)
                left_in_streams = await drained(own, keys, timeout=60)
        assert promoted is not hot_master
        during = statuses[hot][before_kill:]
        assert 503 in during  # the outage was seen, and refused closed
        assert statuses[hot].count(401) == 5  # never an unlimited guess: the budget held through the failover
        assert after_failover == [429] * 5  # exact on the promoted replica
        assert cold_after in (401, 429)
        # Every answer is in login_attempts exactly once, with its outcome: the refusals queued in
        # the streams (on the promoted replica too) and the 503s of the outage, stored straight in Postgres.
        assert len(rows) == answered
        assert len({row["event_id"] for row in rows}) == answered
        assert left_in_streams == 0  # written and acknowledged: nothing left behind
        reason = {401: "unknown_account", 429: "rate_limited", 503: "limiter_unavailable"}
        expected = Counter(
            (phone, reason[status])
            for client, phone in ((hot, HOT_PHONE), (cold, COLD_PHONE))
            for status in statuses[client]
        )
        assert Counter((row["phone_number"], row["reason"]) for row in rows) == expected
