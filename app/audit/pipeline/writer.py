"""The audit writer: Redis shard streams -> ``login_attempts``, each event exactly once.

Every writer (one per API process by default, or ``ladys-essence audit worker``) is a consumer in
the group ``audit-writer`` on all shard streams. An entry is read, its batch is committed in one
idempotent statement, and only then is the entry acknowledged *and deleted*, atomically (a small
Lua script per stream). So, at every instant:

- an event not yet committed is still in its stream, pending for the consumer that read it;
  if that consumer dies, another claims the entry after ``audit_claim_idle_ms`` (XAUTOCLAIM);
- an event read twice (claim after a crash, a commit whose acknowledgement was lost, a request
  that fell back to Postgres after its XADD timed out) is absorbed by ``ON CONFLICT (event_id, created_at)``;
- the stream length is exactly the number of unwritten events, which /health and /metrics report.

Entries that are not login events go to the dead-letter stream with their raw fields; nothing is
dropped silently. Postgres down: the batch is retried with capped exponential backoff, nothing
read further, nothing acknowledged. Redis down: the same backoff, then the groups are re-created
if Redis came back empty, and the writer's own pending entries are re-read. On Redis Cluster a
master that does not answer holds up only its own streams: they are put aside and tried again
(slot map refreshed first) while the other masters' streams are read, written and acknowledged
as usual; once it (or its promoted replica) answers, their pending entries are read again.

This module is the loop; ``batcher.py`` holds the pure decoding and batching, ``streams.py`` the
Redis conversations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping, Sequence

from redis.exceptions import RedisClusterException, RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline import streams
from app.audit.pipeline.backlog import is_full
from app.audit.pipeline.batcher import Batch, Batcher, Decoded, Entry, StreamReply, decode_messages
from app.audit.pipeline.events import stream_fields
from app.audit.pipeline.metrics import AuditMetrics, shared_metrics
from app.audit.pipeline.partitions import PartitionMaintenance
from app.audit.pipeline.store import InsertMethod, is_data_error, store_events
from app.audit.pipeline.streams import (
    GROUP,
    STALE_CONSUMER_MS,
    Backlog,
    StreamsUnavailable,
    read_backlog_by_stream,
    unwritten_events,
)
from app.core.errors import is_database_unavailable
from app.core.redis import RedisClient, is_cluster
from app.core.redis_keys import KeySpace, stream_share
from app.core.settings import Settings

logger = logging.getLogger(__name__)

YIELD_EVERY = 500  # entries decoded between turns of the event loop
# A blocking read longer than the client's socket timeout (2 s) would look like a dead Redis.
MAX_BLOCK_MS = 1000
BACKLOG_REFRESH_SECONDS = 1.0
# Redis Cluster: a stream whose master did not answer is tried again after the first delay, doubling
# up to the cap, after a slot-map refresh (at most one a second: a failover takes seconds anyway).
STREAM_RETRY_FIRST_SECONDS = 0.5
STREAM_RETRY_CAP_SECONDS = 2.0
SLOT_MAP_REFRESH_SECONDS = 1.0


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WriteAbandoned(Exception):
    """Stopping while Postgres (or Redis) stays down: the batch stays pending for a later writer."""


class Backoff:
    """Capped exponential backoff with jitter, so a fleet of writers does not retry in lockstep."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy

    def reset(self) -> None:
        self._next = self.first


class AuditWriter:
    """One consumer of the audit streams.

    A reader task reads, decodes and cuts batches; ``write_concurrency`` tasks commit them and
    acknowledge each batch after its own commit. The bounded queue between them is the
    backpressure: while Postgres is down the reader stops reading and entries wait in Redis.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        engine: AsyncEngine,
        settings: Settings,
        metrics: AuditMetrics | None = None,
        consumer_name: str | None = None,
        *,
        group: str = GROUP,
        insert_method: InsertMethod = "copy",
        write_concurrency: int = 2,
        drain_timeout: float = 10.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.engine = engine
        self.metrics = metrics or shared_metrics()
        self.consumer = consumer_name or default_consumer_name()
        self.group = group
        self.insert_method: InsertMethod = insert_method
        self.write_concurrency = max(1, write_concurrency)
        self.drain_timeout = drain_timeout
        self.batch_size = max(1, settings.audit_batch_size)
        self.block_ms = max(1, min(settings.audit_flush_ms, MAX_BLOCK_MS))
        self.claim_idle_ms = max(1, settings.audit_claim_idle_ms)
        self.claim_interval = min(30.0, max(0.2, self.claim_idle_ms / 2000))
        self.streams = keys.audit_streams()
        self._stream_share = stream_share(settings.audit_max_backlog, keys.shards)
        self._reader = streams.raw_reader(redis)
        self._stopping = asyncio.Event()
        self._give_up_at = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self._queue_depth())
        self._acks: set[asyncio.Task[None]] = set()
        self._ack_slots = asyncio.Semaphore(self.write_concurrency)
        self.flush_seconds = max(0, settings.audit_flush_ms) / 1000
        self._batcher = Batcher(self.batch_size)  # its partial batch: read, not yet handed to a write task
        self._partial_due = 0.0
        self._behind = False  # the last read stopped at its count on some stream: more are waiting
        self._new_entries: dict[str, bytes | str] = dict.fromkeys(self.streams, ">")
        self._groups_ready = False
        self._next_claim = 0.0
        self._next_backlog = 0.0
        self._cluster = is_cluster(redis)
        # Cluster: streams whose master did not answer -> (when to try again, the backoff to it).
        self._set_aside: dict[str, tuple[float, Backoff]] = {}
        self._next_slot_map_refresh = 0.0
        self._partitions = PartitionMaintenance(engine, settings.audit_partitions_ahead)  # months ahead, hourly

    def _queue_depth(self) -> int:
        # Room for a whole catch-up read (a batch's worth from every stream) plus what is being
        # written: the reader can then decode the next read while Postgres writes this one.
        return len(self.streams) + 2 * self.write_concurrency

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run in the background of the current event loop (the API process's writer)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._give_up_at = float("inf")
            self._queue = asyncio.Queue(maxsize=self._queue_depth())  # nothing left from a cancelled run
            self._batcher.take()  # entries of a cancelled run stay pending in Redis and are re-read
            self._groups_ready = False
            self._set_aside.clear()  # every stream's own pending entries are re-read anyway
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"audit-writer:{self.consumer}")
        return self._task

    def request_stop(self) -> None:
        """Stop reading; what was read is still written (signal handlers call this)."""
        if not self._stopping.is_set():
            self._give_up_at = time.monotonic() + self.drain_timeout
            self._stopping.set()

    async def stop(self) -> None:
        """Stop reading, finish writing what was read, and return.

        If Postgres stays down for ``drain_timeout`` the read entries are left pending in Redis,
        where another writer claims them; nothing is acknowledged that was not committed.
        """
        self.request_stop()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait([task])  # raises only if *we* are cancelled, not if the task was
            if not task.cancelled() and task.exception() is not None:
                logger.error("audit writer %s ended with an error", self.consumer, exc_info=task.exception())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Read, write and acknowledge until :meth:`stop`; outlives outages of Redis and Postgres."""
        logger.info("audit writer %s started on %d streams", self.consumer, len(self.streams))
        # This run's tasks keep this run's queue, even if a later start() makes a new one.
        queue = self._queue
        writers = [
            asyncio.get_running_loop().create_task(self._write_loop(queue), name=f"audit-writer:{self.consumer}:{n}")
            for n in range(self.write_concurrency)
        ]
        try:
            await self._read_loop()
            await self._flush_partial()
            for _ in writers:
                await queue.put(None)
            await asyncio.gather(*writers)
            await queue.join()  # the last acknowledgements
        finally:
            for task in [*writers, *self._acks]:  # only still running if we were cancelled: entries stay pending
                task.cancel()
            await asyncio.gather(*writers, *self._acks, return_exceptions=True)
        logger.info("audit writer %s stopped", self.consumer)

    async def run_until_drained(self, within_seconds: float = 60.0) -> None:
        """Write until every shard stream is empty, then stop (tests, benchmarks, a one-shot drain)."""
        deadline = time.monotonic() + within_seconds
        self.start()
        try:
            while True:
                await asyncio.sleep(0.02)
                with contextlib.suppress(RedisError, OSError):
                    # Stream lengths only: the full backlog (pending, oldest entry) every 20 ms
                    # cost the drain it was watching several per cent.
                    if await unwritten_events(self.redis, self.keys) == 0:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"audit streams not drained within {within_seconds} s")
        finally:
            await self.stop()

    async def backlog(self) -> Backlog:
        """Unwritten and pending events and the oldest one's age, for /health and /metrics."""
        backlog, lengths = await read_backlog_by_stream(self.redis, self.keys, self.group)
        self.metrics.observe_backlog(backlog)
        self.metrics.backlog_full.set(int(is_full(lengths, self._stream_share)))
        return backlog

    # ---- reading -----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                if not self._groups_ready:
                    await self._settle_in_hand()  # our own pending entries are then only the stuck ones
                    await self.ensure_groups()
                    await self._recover_own_pending()
                if self._set_aside and time.monotonic() >= min(at for at, _ in self._set_aside.values()):
                    await self._retry_set_aside()
                if time.monotonic() >= self._next_claim:
                    await self._settle_in_hand()
                    await self.claim_abandoned()
                    await self._partitions.run_if_due()
                if self._batcher.partial and not self._behind:
                    # Caught up, and a batch is filling: let it fill in Redis, then take what came
                    # in one read (under a steady trickle each read costs a round trip).
                    await self._pause(self._partial_due - time.monotonic())
                    if self._stopping.is_set():
                        continue
                    await self._dispatch(await self._read(self._new_entry_ids(), block=False))
                    if not self._behind:
                        await self._flush_partial()
                    continue
                # Behind (the last read was full): read on at once, no waiting for a batch to fill.
                await self._dispatch(await self._read(self._new_entry_ids(), block=not self._behind))
                backoff.reset()
                if time.monotonic() >= self._next_backlog:
                    self._next_backlog = time.monotonic() + BACKLOG_REFRESH_SECONDS
                    await self._refresh_backlog()
            except StreamsUnavailable as exc:
                # Cluster: an acknowledgement of dead-lettered or vanished entries met a master that
                # did not answer; its streams wait, the others go on.
                self._put_aside(exc.failed)
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    # Redis lost the stream or group (restarted without persistence, key deleted).
                    logger.warning("audit consumer group missing; re-creating it")
                    self._groups_ready = False
                    await self._pause(0.01)
                    continue
                self.metrics.write_errors.inc()
                delay = backoff.next()
                logger.warning("audit writer: Redis error (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                self._groups_ready = False  # then re-read what we hold in case an ACK was lost
                await streams.after_redis_error(self.redis)
                await self._pause(delay)
            except Exception as exc:
                # A bug must not silently end the pipeline while events pile up in Redis.
                if is_database_unavailable(exc):  # e.g. Postgres starting up again: no bug, no traceback
                    logger.warning("audit writer: Postgres unavailable (%s: %s); retrying", type(exc).__name__, exc)
                else:
                    logger.exception("audit writer %s: unexpected error; retrying", self.consumer)
                await self._pause(backoff.next())

    async def ensure_groups(self) -> None:
        """Create the consumer group on every shard stream (from the start, so nothing is skipped)."""
        try:
            await streams.ensure_groups(self.redis, self.streams, self.group)
        except StreamsUnavailable as exc:  # cluster: created on the masters that answered
            self._put_aside(exc.failed)
        self._groups_ready = True

    async def _recover_own_pending(self, among: Sequence[str] | None = None) -> None:
        """Entries this consumer read but never acknowledged (a reused name, or a lost ACK reply)."""
        names = [stream for stream in (self.streams if among is None else among) if stream not in self._set_aside]
        cursors: dict[str, bytes | str] = dict.fromkeys(names, "0")
        while cursors and not self._stopping.is_set():
            reply = await self._read(cursors, block=False)
            # Walk each stream's pending list forward; a stream with nothing more drops out.
            cursors = {stream: messages[-1][0] for stream, messages in reply if messages}
            await self._dispatch(reply)

    async def claim_abandoned(self) -> None:
        """Take over entries pending longer than ``audit_claim_idle_ms`` (their reader likely died)."""
        self._next_claim = time.monotonic() + self.claim_interval
        for stream in self.streams:
            if stream in self._set_aside:
                continue
            try:
                await self._claim_idle(stream)
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                if not self._cluster:
                    raise
                self._put_aside({stream: exc})  # its master did not answer: the other streams go on
            if self._stopping.is_set():
                break
        # Consumers of stopped processes, once idle well past any claim: only ones with nothing pending.
        idle_ms = max(STALE_CONSUMER_MS, 10 * self.claim_idle_ms)
        answering = [stream for stream in self.streams if stream not in self._set_aside]
        await streams.forget_stale_consumers(self.redis, answering, self.group, idle_ms)

    async def _claim_idle(self, stream: str) -> None:
        pages = streams.claim_idle(self.redis, stream, self.group, self.consumer, self.claim_idle_ms, self.batch_size)
        async with contextlib.aclosing(pages):
            async for claimed in pages:
                logger.info("audit writer %s claimed %d abandoned entries", self.consumer, len(claimed))
                await self._dispatch([(stream, claimed)])
                if self._stopping.is_set():
                    return

    def _new_entry_ids(self) -> dict[str, bytes | str]:
        if not self._set_aside:
            return self._new_entries
        return {stream: ">" for stream in self.streams if stream not in self._set_aside}

    def _put_aside(self, failed: Mapping[str, BaseException]) -> None:
        """Cluster: these streams' master did not answer; try them again later, read the others meanwhile."""
        now = time.monotonic()
        fresh = [stream for stream in failed if stream not in self._set_aside]
        for stream in failed:
            backoff = self._set_aside[stream][1] if stream in self._set_aside else self._stream_backoff()
            self._set_aside[stream] = (now + backoff.next(), backoff)
        # Said once per outage of a master; an error reply (WRONGTYPE, OOM) is said at every retry,
        # since it will not go away by itself.
        replies = [stream for stream in failed if isinstance(failed[stream], ResponseError)]
        if said := fresh or replies:
            self.metrics.write_errors.inc()
            exc = failed[said[0]]
            logger.warning(
                "audit writer: %d streams unavailable (%s: %s); the other masters' streams go on",
                len(said),
                type(exc).__name__,
                str(exc)[:200],
            )

    @staticmethod
    def _stream_backoff() -> Backoff:
        return Backoff(STREAM_RETRY_FIRST_SECONDS, STREAM_RETRY_CAP_SECONDS)

    async def _retry_set_aside(self) -> None:
        """The streams put aside whose time has come: the slot map, their groups, then our pending entries."""
        now = time.monotonic()
        due = [stream for stream, (at, _) in self._set_aside.items() if at <= now]
        await self._refresh_slot_map()
        await self._settle_in_hand()  # what is in flight is not read again as pending
        try:
            await streams.ensure_groups(self.redis, due, self.group)  # a promoted replica may lack them
        except StreamsUnavailable as exc:
            self._put_aside(exc.failed)
            due = [stream for stream in due if stream not in exc.failed]
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self._put_aside(dict.fromkeys(due, exc))
            return
        for stream in due:
            del self._set_aside[stream]
        if due:
            logger.info("audit writer: %d streams answer again; re-reading their pending entries", len(due))
            # Read before the master failed and never acknowledged (the reply or the ACK was lost, or
            # the ACK was not attempted): written again, absorbed by the idempotent insert.
            await self._recover_own_pending(due)

    async def _refresh_slot_map(self) -> None:
        if time.monotonic() >= self._next_slot_map_refresh:
            self._next_slot_map_refresh = time.monotonic() + SLOT_MAP_REFRESH_SECONDS
            await streams.after_redis_error(self.redis)

    async def _refresh_backlog(self) -> None:
        try:
            await self.backlog()
        except (RedisError, RedisClusterException, OSError, TimeoutError):
            if not self._cluster:
                raise
            # A master that does not answer: the reads put its streams aside; the gauges wait.

    async def _read(self, start_ids: dict[str, bytes | str], *, block: bool) -> StreamReply:
        try:
            reply = await streams.read_group(
                self._reader, self.group, self.consumer, start_ids, self.batch_size, self.block_ms if block else None
            )
        except StreamsUnavailable as exc:  # cluster: what the masters that answered returned
            self._put_aside(exc.failed)
            reply = exc.reply
        self._behind = any(len(messages) >= self.batch_size for _, messages in reply)
        return reply

    async def _flush_partial(self) -> None:
        batch = self._batcher.take()
        if batch:
            await self._queue.put(batch)

    async def _settle_in_hand(self) -> None:
        """Write and acknowledge everything read so far (before re-reading our own pending list)."""
        await self._flush_partial()
        await self._queue.join()

    async def _dispatch(self, reply: StreamReply) -> None:
        """Dead-letter what is not an event, queue the rest in batches for the write tasks.

        A batch goes out when it holds ``audit_batch_size`` events, or ``audit_flush_ms`` after its
        first event arrived: under a steady trickle (an attack refused at a few thousand per
        second) one COPY and one acknowledgement then carry hundreds of events, not a handful.
        """
        decoded = Decoded()
        seen = 0
        for stream, messages in reply:
            decode_messages(stream, messages, decoded)
            seen += len(messages)
            if seen >= YIELD_EVERY:
                seen = 0
                await asyncio.sleep(0)  # a catch-up read is thousands of entries: let requests run
        fresh = not self._batcher.partial
        full = self._batcher.add(decoded.events)
        for batch in full:
            await self._queue.put(batch)
        if fresh or full:
            self._partial_due = time.monotonic() + self.flush_seconds
        if decoded.invalid:
            await self._dead_letter(decoded.invalid)
        if decoded.vanished:
            await self._acknowledge([(entry.stream, entry.entry_id) for entry in decoded.vanished])

    # ---- writing -----------------------------------------------------------------------------------

    async def _write_loop(self, queue: asyncio.Queue[Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            try:
                await self._write(batch)
                # Committed. The acknowledgement is Redis's business and need not hold up the next
                # commit, but only a few may be in flight (each holds a connection of the pool the
                # limiter uses too); the batch counts as done (queue.join()) once acknowledged.
                await self._ack_slots.acquire()
            except WriteAbandoned as exc:
                logger.warning("audit writer %s: %s", self.consumer, exc)
                queue.task_done()
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    # Unknown trouble: the entries stay pending and are claimed again later.
                    logger.exception("audit writer %s: batch left pending", self.consumer)
                queue.task_done()
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                ack = asyncio.get_running_loop().create_task(self._acknowledge_committed(batch))
                self._acks.add(ack)
                ack.add_done_callback(functools.partial(self._acknowledged, queue))
        queue.task_done()

    def _acknowledged(self, queue: asyncio.Queue[Batch | None], ack: asyncio.Task[None]) -> None:
        self._acks.discard(ack)
        self._ack_slots.release()
        queue.task_done()
        if not ack.cancelled() and (exc := ack.exception()) is not None and not isinstance(exc, WriteAbandoned):
            logger.error("audit writer %s: acknowledgement failed; entries stay pending", self.consumer, exc_info=exc)

    async def _write(self, batch: Batch) -> None:
        """Commit ``batch``; retry while Postgres is unavailable; isolate rows Postgres refuses."""
        events = list({event.event_id: event for _, _, event in batch}.values())
        backoff = Backoff()
        while True:
            try:
                inserted = await store_events(self.engine, events, self.insert_method)
            except Exception as exc:
                if is_data_error(exc):
                    await self._write_rows_apart(batch, exc)
                    return
                self.metrics.write_errors.inc()
                self._raise_if_giving_up(len(batch), exc)
                delay = backoff.next()
                logger.warning(
                    "audit writer: Postgres unavailable (%s: %s); %d events pending, retrying in %.1f s",
                    type(exc).__name__,
                    str(exc)[:200],
                    len(batch),
                    delay,
                )
                await self._pause(delay, until_given_up=True)
                continue
            self.metrics.events_written.inc(inserted)
            self.metrics.events_duplicate.inc(len(batch) - inserted)
            self.metrics.batch_rows.observe(len(events))
            return

    async def _write_rows_apart(self, batch: Batch, exc: BaseException) -> None:
        """A row Postgres refuses must not block the batch forever: write one by one, dead-letter the bad."""
        if len(batch) == 1:
            stream, entry_id, event = batch[0]
            logger.error("audit event %s refused by Postgres: %s", event.event_id, exc)
            entry = Entry(stream, entry_id, stream_fields(event))
            await self._dead_letter([(entry, f"refused by Postgres: {exc}")], acknowledge=False)
            return
        for item in batch:
            await self._write([item])

    async def _acknowledge_committed(self, batch: Batch) -> None:
        """The rows are in; keep trying to acknowledge (a lost ACK only means a harmless redelivery).

        On a cluster a master that does not answer is not waited for (each wait would hold up the
        next commits): its streams are put aside, and once it answers their pending entries are
        read again, found written, and acknowledged then.
        """
        backoff = Backoff()
        while True:
            try:
                await self._acknowledge([(stream, entry_id) for stream, entry_id, _ in batch])
                return
            except StreamsUnavailable as exc:
                self._put_aside(exc.failed)
                return
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                self._raise_if_giving_up(len(batch), exc)
                await streams.after_redis_error(self.redis)
                await self._pause(backoff.next(), until_given_up=True)

    async def _acknowledge(self, entries: Sequence[tuple[str, bytes | str]]) -> None:
        if self._set_aside:  # cluster: re-read once their master answers, and acknowledged then
            entries = [entry for entry in entries if entry[0] not in self._set_aside]
        await streams.acknowledge(self.redis, self.group, entries)

    async def _dead_letter(self, invalid: Sequence[tuple[Entry, str]], *, acknowledge: bool = True) -> None:
        """Keep each bad entry, its origin and the reason in the dead-letter stream, then let it go."""
        await streams.dead_letter(self.redis, self.keys.audit_dead_letter, invalid, self.consumer)  # stored first
        self.metrics.events_dead_lettered.inc(len(invalid))
        logger.warning("audit writer: %d entries dead-lettered (%s)", len(invalid), invalid[0][1])
        if acknowledge:
            await self._acknowledge([(entry.stream, entry.entry_id) for entry, _ in invalid])

    def _raise_if_giving_up(self, count: int, exc: BaseException) -> None:
        if self._stopping.is_set() and time.monotonic() >= self._give_up_at:
            raise WriteAbandoned(f"stopped with {count} events pending in Redis ({type(exc).__name__})") from exc

    async def _pause(self, seconds: float, *, until_given_up: bool = False) -> None:
        """Sleep; a stop wakes the reader at once, and cuts a retry short at the drain deadline."""
        if until_given_up:
            seconds = max(0.0, min(seconds, self._give_up_at - time.monotonic()))
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
