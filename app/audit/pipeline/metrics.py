"""Counters and backlog gauges of the audit pipeline.

Metrics live on an :class:`AuditMetrics` instance with its own registry unless told otherwise, so
tests can build as many pipelines as they like without prometheus_client's "Duplicated
timeseries" error; the application uses :func:`shared_metrics`, registered once per process on
the default registry that ``GET /metrics`` exposes.
"""

from __future__ import annotations

import functools
from typing import TypedDict

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import Redis

from app.core.redis_keys import KeySpace

GROUP = "audit-writer"
NAMESPACE = "ladys_essence"


class Backlog(TypedDict):
    """What is in Redis and not yet in Postgres.

    ``stream_length``: entries in the shard streams; the writer deletes an entry once its row is
    committed, so this is exactly the unwritten events. ``pending``: of those, the ones a writer
    has read and not yet committed. ``lag_seconds``: age of the oldest unwritten event (0 if none).
    """

    stream_length: int
    pending: int
    lag_seconds: float


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"audit_{name}", doc, namespace=NAMESPACE, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"audit_{name}", doc, namespace=NAMESPACE, registry=self.registry)

        self.events_published = counter("events_published", "Login events appended to the Redis audit streams.")
        self.events_written = counter("events_written", "Rows the audit writer inserted into login_attempts.")
        self.events_duplicate = counter(
            "events_duplicate", "Events the writer found already stored (redelivery after a crash or fallback)."
        )
        self.events_fallback = counter(
            "events_fallback", "Events written straight to Postgres because Redis refused them."
        )
        self.events_dead_lettered = counter(
            "events_dead_lettered", "Stream entries that are not valid login events, moved to the dead-letter stream."
        )
        self.write_errors = counter("write_errors", "Failed batch writes or stream reads (each is retried).")
        self.batch_rows = Histogram(
            "audit_batch_rows",
            "Events per batch insert.",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500),
        )
        self.stream_length = gauge("stream_length", "Unwritten events in the Redis audit streams.")
        self.pending = gauge("pending", "Events read by a writer and not yet committed to Postgres.")
        self.lag_seconds = gauge("lag_seconds", "Age of the oldest unwritten audit event, in seconds.")

    def observe_backlog(self, backlog: Backlog) -> None:
        self.stream_length.set(backlog["stream_length"])
        self.pending.set(backlog["pending"])
        self.lag_seconds.set(backlog["lag_seconds"])

    def value(self, name: str) -> float:
        """Current value of a counter or gauge by attribute name (for tests and the CLI)."""
        for family in getattr(self, name).collect():
            for sample in family.samples:
                if sample.name in (family.name, f"{family.name}_total"):
                    return float(sample.value)
        return 0.0


@functools.cache
def shared_metrics() -> AuditMetrics:
    """The process-wide metrics on prometheus_client's default registry (what ``/metrics`` serves)."""
    return AuditMetrics(REGISTRY)


async def read_backlog(redis: Redis, keys: KeySpace, group: str = GROUP) -> Backlog:
    """One pipelined round trip over every shard stream: lengths, pending counts, oldest entry."""
    streams = keys.audit_streams()
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    for stream in streams:
        pipe.xlen(stream)
        pipe.xpending(stream, group)
        pipe.xrange(stream, "-", "+", count=1)
    replies = await pipe.execute(raise_on_error=False)
    seconds, micros = replies[0]
    now_ms = seconds * 1000 + micros // 1000
    length = pending = 0
    oldest_ms: int | None = None
    for index in range(len(streams)):
        xlen, xpending, first = replies[1 + 3 * index : 4 + 3 * index]
        if isinstance(xlen, int):
            length += xlen
        if isinstance(xpending, dict):  # an error (no stream or group yet) means nothing pending
            pending += int(xpending["pending"])
        if isinstance(first, list) and first:
            entry_ms = int(_text(first[0][0]).split("-", 1)[0])
            oldest_ms = entry_ms if oldest_ms is None else min(oldest_ms, entry_ms)
    lag = max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms is not None else 0.0
    return Backlog(stream_length=length, pending=pending, lag_seconds=round(lag, 3))


async def unwritten_events(redis: Redis, keys: KeySpace) -> int:
    """Entries in all shard streams (read or not): only stream lengths, one pipelined round trip."""
    pipe = redis.pipeline(transaction=False)
    for stream in keys.audit_streams():
        pipe.xlen(stream)
    return sum(await pipe.execute())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
