"""Redis plumbing of the audit pipeline: consumer groups, reads, claims, acknowledgement, backlog.

Each function is one Redis conversation about the shard streams; none keeps state. The writer
(``writer.py``) decides when to call which.

On Redis Cluster (``REDIS_CLUSTER=true``) a command over several shard streams would cross hash
slots, which Redis refuses: there the reads, the acknowledgement and the backlog probe go out as
one command per stream (per slot), one pipeline per master. A master that does not answer fails
only the streams it owns: the reads, group creations and acknowledgements raise
:class:`StreamsUnavailable` naming them, with what the other masters answered.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, TypedDict

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.audit.pipeline.batcher import Entry, StreamReply, text
from app.core.redis import RedisClient
from app.core.redis_keys import KeySpace

logger = logging.getLogger(__name__)

GROUP = "audit-writer"
# Consumers left behind by stopped processes are removed once idle this long with nothing pending.
STALE_CONSUMER_MS = 3_600_000

# Acknowledge and delete in one step, so an entry is never acknowledged but left in the stream (a
# phantom backlog forever) nor deleted but left pending. One call per batch: a batch holds events of
# every shard stream (it is cut in time order), and a call per stream cost the writer a measurable
# share of its CPU (docs/audit.md). On Redis Cluster it is one call per stream (a script's keys must
# share a slot), pipelined per master. KEYS are the streams; ARGV[1] the group, ARGV[1 + k] the space-separated IDs for
# KEYS[k]: packing hundreds of arguments was a good part of the writer's CPU. Chunks stay under
# unpack()'s limit.
ACK_AND_DELETE = """
local done = 0
for k = 1, #KEYS do
  local ids = {}
  for id in string.gmatch(ARGV[k + 1], '%S+') do ids[#ids + 1] = id end
  for first = 1, #ids, 1000 do
    local last = math.min(first + 999, #ids)
    redis.call('XACK', KEYS[k], ARGV[1], unpack(ids, first, last))
    done = done + redis.call('XDEL', KEYS[k], unpack(ids, first, last))
  end
end
return done
"""


class Backlog(TypedDict):
    """What is in Redis and not yet in Postgres.

    ``stream_length``: entries in the shard streams; the writer deletes an entry once its row is
    committed, so this is exactly the unwritten events. ``pending``: of those, the ones a writer
    has read and not yet committed. ``lag_seconds``: age of the oldest unwritten event (0 if none).
    """

    stream_length: int
    pending: int
    lag_seconds: float


class StreamsUnavailable(RedisError):
    """Redis Cluster: the masters owning ``failed`` (stream -> error) did not answer; the others did.

    What the others were asked was done: ``reply`` holds what a read returned from them. Only a
    cluster raises it; one Redis fails as a whole.
    """

    def __init__(self, failed: Mapping[str, BaseException], reply: StreamReply | None = None) -> None:
        first = next(iter(failed.values()))
        super().__init__(f"{len(failed)} audit streams unavailable ({type(first).__name__}: {first})")
        self.failed = dict(failed)
        self.reply: StreamReply = reply or []


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def raw_reader(redis: RedisClient) -> RedisClient:
    """A client on the same pool whose XREADGROUP replies are left raw.

    redis-py's per-entry conversion was the largest single cost of the writer, and the hot path
    needs only one field per entry. A cluster client shares its nodes' callbacks with every user
    of the client, so there the replies stay converted (the batcher reads both forms).
    """
    if isinstance(redis, RedisCluster):
        return redis
    reader = type(redis)(connection_pool=redis.connection_pool)
    reader.set_response_callback("XREADGROUP", _raw_reply)
    return reader


async def read_group(
    reader: RedisClient,
    group: str,
    consumer: str,
    start_ids: dict[str, bytes | str],
    count: int,
    block_ms: int | None,
) -> StreamReply:
    """One XREADGROUP over ``start_ids``' streams (``">"``: new entries; an id: our pending ones)."""
    if isinstance(reader, RedisCluster):
        return await _read_group_per_stream(reader, group, consumer, start_ids, count, block_ms)
    reply: Any = await reader.xreadgroup(group, consumer, start_ids, count=count, block=block_ms)  # type: ignore[arg-type]
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply  # RESP3 map or RESP2 list
    return [(text(stream), messages) for stream, messages in pairs]


async def _read_group_per_stream(
    cluster: RedisCluster,
    group: str,
    consumer: str,
    start_ids: dict[str, bytes | str],
    count: int,
    block_ms: int | None,
) -> StreamReply:
    """Redis Cluster: one XREADGROUP per stream, pipelined per master.

    Not blocking: a blocking read holds its node's connection until it times out, and the streams
    of every master are read in the same round. Finding nothing, it waits ``block_ms`` instead, as
    a blocking read that timed out would have. Streams whose master failed: :class:`StreamsUnavailable`,
    carrying what the other streams returned.
    """
    names = list(start_ids)
    results = await _per_master(
        cluster, names, lambda pipe, i: pipe.xreadgroup(group, consumer, {names[i]: start_ids[names[i]]}, count=count)
    )
    reply: StreamReply = []
    failed: dict[str, BaseException] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, Exception):
            failed[name] = result
            continue
        pairs = result.items() if isinstance(result, dict) else (result or [])
        reply.extend((text(stream), messages) for stream, messages in pairs)
    if failed:
        raise StreamsUnavailable(failed, reply)
    if not any(messages for _, messages in reply) and block_ms:
        await asyncio.sleep(block_ms / 1000)
    return reply


async def _per_master(cluster: RedisCluster, keys: Sequence[str], add: Callable[[Any, int], object]) -> list[Any]:
    """Per key, the reply of the command ``add(pipe, index)`` queued for ``keys[index]``, or its master's error.

    One pipeline per master, all at once. Not redis-py's one cluster pipeline over every master:
    it raises the first master's connection error for the whole pipeline (it gathers the masters'
    pipelines without ``return_exceptions``), although the other masters ran their commands, so a
    dead master stopped the writer on every master.
    """
    await cluster.initialize()  # the slot map on first use; a no-op afterwards
    outcome: list[Any] = [None] * len(keys)
    by_master: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        try:
            node = cluster.get_node_from_key(key)
        except (RedisError, RedisClusterException) as exc:  # a slot no master owns (yet)
            outcome[index] = exc
            continue
        by_master[node.name if node is not None else ""].append(index)

    async def send(indices: list[int]) -> list[Any]:
        pipe = cluster.pipeline(transaction=False)
        for index in indices:
            add(pipe, index)
        return await pipe.execute(raise_on_error=False)

    groups = list(by_master.values())
    results = await asyncio.gather(*(send(indices) for indices in groups), return_exceptions=True)
    for indices, result in zip(groups, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled, not a Redis answer
        for position, index in enumerate(indices):
            outcome[index] = result if isinstance(result, Exception) else result[position]
    return outcome


def _failures(keys: Sequence[str], results: Sequence[Any]) -> dict[str, BaseException]:
    return {key: result for key, result in zip(keys, results, strict=True) if isinstance(result, Exception)}


async def after_redis_error(redis: RedisClient) -> None:
    """On a cluster, refresh the slot map after an error: a failed master's replica may have taken over.

    redis-py refreshes it itself only after a single command's connection error, not after one
    inside a pipeline, so a writer reading in pipelines would keep asking the dead master.
    """
    if isinstance(redis, RedisCluster):
        try:
            await redis.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            logger.warning("audit: Redis Cluster slot map refresh failed (%s: %s)", type(exc).__name__, exc)


async def ensure_groups(redis: RedisClient, streams: Sequence[str], group: str) -> None:
    """Create the consumer group on every shard stream (from the start, so nothing is skipped)."""
    if isinstance(redis, RedisCluster):
        results = await _per_master(
            redis, streams, lambda pipe, i: pipe.xgroup_create(streams[i], group, id="0", mkstream=True)
        )
        failed = {stream: exc for stream, exc in _failures(streams, results).items() if "BUSYGROUP" not in str(exc)}
        if failed:
            raise StreamsUnavailable(failed)
        return
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xgroup_create(stream, group, id="0", mkstream=True)
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            raise reply


async def claim_idle(
    redis: RedisClient, stream: str, group: str, consumer: str, idle_ms: int, count: int
) -> AsyncGenerator[list[tuple[Any, Any]]]:
    """Pages of entries of ``stream`` pending longer than ``idle_ms``, now pending for ``consumer``."""
    start: Any = "0-0"
    while True:
        reply = await redis.xautoclaim(stream, group, consumer, idle_ms, start_id=start, count=count)
        start, claimed = reply[0], [(i, fields) for i, fields in reply[1] if i is not None]
        if claimed:
            yield claimed
        if text(start) == "0-0":
            return


async def forget_stale_consumers(redis: RedisClient, streams: Sequence[str], group: str, idle_ms: int) -> None:
    """Drop consumers idle over ``idle_ms`` with nothing pending (only ever those: that is safe)."""
    if isinstance(redis, RedisCluster):  # housekeeping: a master that does not answer is skipped
        infos = await _per_master(redis, streams, lambda pipe, i: pipe.xinfo_consumers(streams[i], group))
        gone = _stale(streams, infos, idle_ms)
        if gone:
            keys = [stream for stream, _ in gone]
            await _per_master(redis, keys, lambda pipe, i: pipe.xgroup_delconsumer(gone[i][0], group, gone[i][1]))
        return
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_consumers(stream, group)
    stale = _stale(streams, await pipe.execute(raise_on_error=False), idle_ms)
    if stale:
        pipe = redis.pipeline(transaction=False)
        for stream, name in stale:
            pipe.xgroup_delconsumer(stream, group, name)
        await pipe.execute(raise_on_error=False)


def _stale(streams: Sequence[str], replies: Sequence[Any], idle_ms: int) -> list[tuple[str, Any]]:
    """(stream, consumer) of the consumers idle over ``idle_ms`` with nothing pending; errors skipped."""
    return [
        (stream, consumer["name"])
        for stream, consumers in zip(streams, replies, strict=True)
        if isinstance(consumers, list)
        for consumer in consumers
        if consumer["pending"] == 0 and consumer["idle"] > idle_ms
    ]


async def acknowledge(redis: RedisClient, group: str, entries: Sequence[tuple[str, bytes | str]]) -> None:
    """Acknowledge and delete ``entries`` (stream, entry id) in one script call (on a cluster, one per stream)."""
    by_stream: dict[str, list[bytes]] = defaultdict(list)
    for stream, entry_id in entries:
        by_stream[stream].append(entry_id if isinstance(entry_id, bytes) else entry_id.encode())
    if not by_stream:
        return
    # EVAL, not EVALSHA: no NOSCRIPT after a Redis restart, no SCRIPT EXISTS round trip.
    if isinstance(redis, RedisCluster):
        names = list(by_stream)
        results = await _per_master(
            redis, names, lambda pipe, i: pipe.eval(ACK_AND_DELETE, 1, names[i], group, b" ".join(by_stream[names[i]]))
        )
        if failed := _failures(names, results):
            raise StreamsUnavailable(failed)
        return
    await redis.eval(ACK_AND_DELETE, len(by_stream), *by_stream, group, *(b" ".join(ids) for ids in by_stream.values()))


async def dead_letter(redis: RedisClient, stream: str, invalid: Sequence[tuple[Entry, str]], consumer: str) -> None:
    """Keep each bad entry, its origin and the reason in the dead-letter ``stream``."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    pipe = redis.pipeline(transaction=False)
    for entry, reason in invalid:
        record: dict[Any, Any] = {
            "stream": entry.stream,
            "id": entry.entry_id,
            "error": reason[:500],
            "consumer": consumer,
            "at": now,
        }
        for name, value in (entry.fields or {}).items():
            record[f"field:{text(name)}"] = value
        pipe.xadd(stream, record)
    await pipe.execute()


async def read_backlog(redis: RedisClient, keys: KeySpace, group: str = GROUP) -> Backlog:
    """One pipelined round trip over every shard stream: lengths, pending counts, oldest entry."""
    backlog, _ = await read_backlog_by_stream(redis, keys, group)
    return backlog


async def read_backlog_by_stream(redis: RedisClient, keys: KeySpace, group: str = GROUP) -> tuple[Backlog, list[int]]:
    """:func:`read_backlog`, and each shard stream's length (for the backlog bound)."""
    streams = keys.audit_streams()
    pipe = redis.pipeline(transaction=False)
    if isinstance(redis, RedisCluster):
        clock: Any = await redis.time()  # a cluster pipeline refuses keyless commands
    else:
        pipe.time()
    for stream in streams:
        pipe.xlen(stream)
        pipe.xpending(stream, group)
        pipe.xrange(stream, "-", "+", count=1)
    replies = await pipe.execute(raise_on_error=False)
    if isinstance(redis, RedisCluster):
        replies.insert(0, clock)
    seconds, micros = replies[0]
    now_ms = seconds * 1000 + micros // 1000
    lengths: list[int] = []
    pending = 0
    oldest_ms: int | None = None
    for index in range(len(streams)):
        xlen, xpending, first = replies[1 + 3 * index : 4 + 3 * index]
        lengths.append(xlen if isinstance(xlen, int) else 0)
        if isinstance(xpending, dict):  # an error (no stream or group yet) means nothing pending
            pending += int(xpending["pending"])
        if isinstance(first, list) and first:
            entry_ms = int(text(first[0][0]).split("-", 1)[0])
            oldest_ms = entry_ms if oldest_ms is None else min(oldest_ms, entry_ms)
    lag = max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms is not None else 0.0
    return Backlog(stream_length=sum(lengths), pending=pending, lag_seconds=round(lag, 3)), lengths


async def unwritten_events(redis: RedisClient, keys: KeySpace) -> int:
    """Entries in all shard streams (read or not): only stream lengths, one pipelined round trip."""
    pipe = redis.pipeline(transaction=False)
    for stream in keys.audit_streams():
        pipe.xlen(stream)
    return sum(await pipe.execute())
