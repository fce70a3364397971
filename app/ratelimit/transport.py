"""How a batch of script calls reaches Redis: one write, or one pipeline per Redis Cluster node.

The limiter's coalescer hands over every script call of one turn of the event loop; each call's
keys share one hash slot (``app/core/redis_keys.py``). On one Redis the batch is one write. On a
cluster, redis-py's cluster pipeline refuses EVALSHA, so the calls are grouped by the master that
owns their slot and each group goes out as one pipeline on that node's connection.

Every reply comes back in its call's place, an error included, and no call is ever sent twice
unless Redis said it did not run it: NOSCRIPT (the node lost its scripts: restarted, or a replica
just promoted) loads the script on the node that answered and re-sends that call; MOVED (failover,
resharding) updates the slot map and re-sends that call to the new owner; ASK (a slot being
migrated) re-sends it once to the importing node after ASKING. A second such answer, a lost
connection or any other error of the store makes that call's reply a :class:`LimiterUnavailable`
(the caller answers 503: fail closed) while the other nodes' calls go on normally.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript

from app.core.errors import LimiterUnavailable
from app.core.redis import RedisClient

logger = logging.getLogger(__name__)

# Every error of the store means "no budget could be taken" (see limiter.py). The cluster client
# raises RedisClusterException, which is not a RedisError, when a slot has no known owner.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
    TimeoutError,
)
# After a node failed, the slot map is refreshed in the background at most this often: a refresh
# makes redis-py recycle every pooled connection, and a failover takes a few seconds anyway.
REFRESH_INTERVAL_SECONDS = 1.0


class ScriptCallLike(Protocol):
    """What a transport needs of a call (``limiter.ScriptCall``)."""

    @property
    def script(self) -> AsyncScript: ...
    @property
    def keys(self) -> tuple[str, ...]: ...
    @property
    def args(self) -> tuple[str | int | bytes, ...]: ...


class ScriptTransport(Protocol):
    async def run(self, calls: Sequence[ScriptCallLike]) -> list[Any]:
        """One reply per call, in order; a per-call error is returned (not raised) in its place."""
        ...


def unavailable(exc: BaseException) -> LimiterUnavailable:
    return LimiterUnavailable(str(exc) or type(exc).__name__)


def script_transport(client: RedisClient) -> ScriptTransport:
    return ClusterTransport(client) if isinstance(client, RedisCluster) else PipelineTransport(client)


class PipelineTransport:
    """One Redis: the whole batch as one write and one read on one pooled connection.

    Hand-written rather than redis-py's pipeline: a refusal is one script call, and the pipeline's
    own layers (its command stack, the retry wrapper, the per-command encoder, observability hooks)
    were a fifth of a refused sign-in's CPU (docs/benchmarks.md). Here the calls are packed by
    hiredis in one step and the replies read in order. A lost connection fails the whole batch and
    the connection is dropped, never handed back with replies still on it.
    """

    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def run(self, calls: Sequence[ScriptCallLike]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            try:
                results = await self._send([calls[index] for index in pending])
            except UNAVAILABLE as exc:
                raise unavailable(exc) from exc
            missing: list[int] = []
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError) and attempt == 0:
                    missing.append(index)
                elif isinstance(result, UNAVAILABLE):
                    replies[index] = unavailable(result)
                else:
                    replies[index] = result
            if not missing:
                break
            try:
                for script in {id(calls[index].script): calls[index].script for index in missing}.values():
                    script.sha = await self._redis.script_load(script.script)
            except UNAVAILABLE as exc:
                raise unavailable(exc) from exc
            pending = missing
        return replies

    async def _send(self, calls: Sequence[ScriptCallLike]) -> list[Any]:
        """Every call's reply in order, a script's error in its place; raises when the connection fails."""
        commands: Any = [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in calls]
        packed = b"".join(hiredis.pack_command(command) for command in commands)
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            results: list[Any] = []
            # One deadline (the connection's socket timeout) for all the replies, rather than a timer
            # armed and cancelled per reply: ``math.inf`` is redis-py's "no timeout of its own".
            async with asyncio.timeout(connection.socket_timeout):
                for _ in calls:
                    try:
                        results.append(await connection.read_response(timeout=math.inf))
                    except redis.exceptions.ResponseError as exc:
                        results.append(exc)
        except BaseException:
            # Replies may still be on the socket (or the task was cancelled mid-read): never reuse it.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return results


class _Route:
    """Where one call goes next: the slot's owner, or (after ASK) the importing node."""

    __slots__ = ("asking", "index", "node", "redirected", "reloaded")

    def __init__(self, index: int, node: ClusterNode, *, asking: bool = False) -> None:
        self.index = index
        self.node = node
        self.asking = asking
        self.redirected = False  # re-sent after MOVED or ASK: not again
        self.reloaded = False  # re-sent after NOSCRIPT: not again


class ClusterTransport:
    """Redis Cluster: one pipeline per master, each call re-routed on its own when redirected."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._refresh: asyncio.Task[None] | None = None
        self._last_refresh = 0.0

    async def run(self, calls: Sequence[ScriptCallLike]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        try:
            await self._cluster.initialize()  # the first call's slot map; a no-op afterwards
        except UNAVAILABLE as exc:
            return [unavailable(exc)] * len(calls)
        routes: list[_Route] = []
        for index, call in enumerate(calls):
            try:
                routes.append(_Route(index, self._owner(call)))
            except UNAVAILABLE as exc:
                replies[index] = unavailable(exc)
        # At most one redirection and one script reload per call: three rounds at most.
        for _ in range(3):
            retry: list[_Route] = []
            loaded: set[tuple[str, str]] = set()
            by_node: dict[str, list[_Route]] = defaultdict(list)
            for route in routes:
                by_node[route.node.name].append(route)
            outcomes = await asyncio.gather(*(self._send(group, calls) for group in by_node.values()))
            for group, results in zip(by_node.values(), outcomes, strict=True):
                for route, result in zip(group, results, strict=True):
                    again = await self._next_route(route, calls[route.index], result, loaded)
                    if again is not None:
                        retry.append(again)
                    elif isinstance(result, UNAVAILABLE):
                        replies[route.index] = unavailable(result)
                    else:
                        replies[route.index] = result
            if not retry:
                break
            routes = retry
        return replies

    def _owner(self, call: ScriptCallLike) -> ClusterNode:
        slot = self._cluster.keyslot(call.keys[0])
        return self._cluster.nodes_manager.get_node_from_slot(slot)

    async def _send(self, group: list[_Route], calls: Sequence[ScriptCallLike]) -> list[Any]:
        """One pipeline on the group's node; the replies in order, or the node's error for each."""
        node = group[0].node
        commands: list[PipelineCommand] = []
        for route in group:
            call = calls[route.index]
            if route.asking:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            command = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            commands.append(PipelineCommand(len(commands), *command))
        try:
            await node.execute_pipeline(commands)
        except UNAVAILABLE as exc:
            self._node_failed(node, exc)
            return [exc] * len(group)
        results = [command.result for command in commands if command.args[0] != "ASKING"]
        if any(isinstance(result, (redis.exceptions.ConnectionError, OSError)) for result in results):
            self._node_failed(node, next(r for r in results if isinstance(r, Exception)))
        return results

    async def _next_route(
        self, route: _Route, call: ScriptCallLike, result: Any, loaded: set[tuple[str, str]]
    ) -> _Route | None:
        """Where to re-send a call Redis says it did not run; None when it ran (or failed for good)."""
        try:
            if isinstance(result, redis.exceptions.AskError) and not route.redirected:
                if isinstance(result, redis.exceptions.MovedError):  # a subclass of AskError
                    await self._cluster.nodes_manager.move_slot(result)
                    target: ClusterNode | None = self._owner(call)
                    asking = False
                else:
                    target = self._cluster.nodes_manager.get_node(host=result.host, port=result.port)
                    asking = True
                if target is None:
                    return None
                moved = _Route(route.index, target, asking=asking)
                moved.redirected, moved.reloaded = True, route.reloaded
                return moved
            if isinstance(result, redis.exceptions.NoScriptError) and not route.reloaded:
                if (route.node.name, call.script.sha) not in loaded:
                    await route.node.execute_command("SCRIPT", "LOAD", call.script.script)
                    loaded.add((route.node.name, call.script.sha))
                route.reloaded = True
                return route
        except UNAVAILABLE as exc:
            logger.warning("limiter: could not re-route a script call (%s: %s)", type(exc).__name__, exc)
        return None

    def _node_failed(self, node: ClusterNode, exc: BaseException) -> None:
        """Refresh the slot map soon, so that a replica that took over gets the next calls."""
        logger.warning("limiter: Redis Cluster node %s failed (%s: %s)", node.name, type(exc).__name__, exc)
        now = time.monotonic()
        if (
            self._refresh is not None and not self._refresh.done()
        ) or now - self._last_refresh < REFRESH_INTERVAL_SECONDS:
            return
        self._last_refresh = now
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_slots())

    async def _refresh_slots(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except UNAVAILABLE as exc:
            logger.warning("limiter: Redis Cluster slot map refresh failed (%s: %s)", type(exc).__name__, exc)
