"""Counters and backlog gauges of the audit pipeline.

Metrics live on an :class:`AuditMetrics` instance with its own registry unless told otherwise, so
tests can build as many pipelines as they like without prometheus_client's "Duplicated
timeseries" error; the application uses :func:`shared_metrics`, registered once per process on
the default registry that ``GET /metrics`` exposes.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Where they were before the writer's Redis plumbing got its own module; tests and benches use them.
from app.audit.pipeline.streams import GROUP, Backlog, read_backlog, unwritten_events
from app.core.prometheus import NAMESPACE

__all__ = ["GROUP", "NAMESPACE", "AuditMetrics", "Backlog", "read_backlog", "shared_metrics", "unwritten_events"]


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"audit_{name}", doc, namespace=NAMESPACE, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            # Every process measures the same Redis: with several workers the latest measurement is the value.
            return Gauge(
                f"audit_{name}", doc, namespace=NAMESPACE, registry=self.registry, multiprocess_mode="mostrecent"
            )

        self.events_published = counter("events_published", "Login events appended to the Redis audit streams.")
        self.events_written = counter("events_written", "Rows the audit writer inserted into login_attempts.")
        self.events_duplicate = counter(
            "events_duplicate", "Events the writer found already stored (redelivery after a crash or fallback)."
        )
        self.events_fallback = counter(
            "events_fallback", "Events written straight to Postgres because Redis refused them."
        )
        self.events_backlog_direct = counter(
            "events_backlog_direct",
            "Events written straight to Postgres because their audit stream was full (AUDIT_MAX_BACKLOG).",
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
        self.backlog_full = gauge(
            "backlog_full", "1 while some audit stream is at its share of AUDIT_MAX_BACKLOG (events go to Postgres)."
        )

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
