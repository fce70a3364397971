"""The bound on the audit streams (``AUDIT_MAX_BACKLOG``): past it, events go straight to Postgres.

Without a bound, refusals that outpace the writer (or a writer that is down) grow Redis until it
refuses writes, and then every login fails closed. So each shard stream holds at most its share of
``AUDIT_MAX_BACKLOG``: whatever appends an event (the limiter's scripts, the publisher's append
below) checks the stream's length in the same Redis call and, at the share, appends nothing and
says so; the caller then stores the event in ``login_attempts`` itself. The check is exact (one
XLEN, O(1), inside the script that would append) and keeps to the stream's own hash slot, so the
streams together never hold more than ``AUDIT_MAX_BACKLOG`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.audit.pipeline.metrics import AuditMetrics
from app.audit.pipeline.streams import GROUP, read_backlog_by_stream
from app.core.redis import RedisClient
from app.core.redis_keys import KeySpace, stream_share


def is_full(lengths: Sequence[int], share: int) -> bool:
    return any(length >= share for length in lengths)


class BacklogProbe:
    """``/health``'s audit check: the backlog, the bound, and whether events are bypassing Redis."""

    def __init__(
        self, redis: RedisClient, keys: KeySpace, metrics: AuditMetrics, max_backlog: int, *, group: str = GROUP
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.metrics = metrics
        self.max_backlog = max_backlog
        self.share = stream_share(max_backlog, keys.shards)
        self.group = group

    async def check(self) -> dict[str, Any]:
        backlog, lengths = await read_backlog_by_stream(self.redis, self.keys, self.group)
        full = is_full(lengths, self.share)
        self.metrics.observe_backlog(backlog)
        self.metrics.backlog_full.set(int(full))
        return {
            **backlog,
            "max_backlog": self.max_backlog,
            "backlog_full": full,
            "events_backlog_direct": int(self.metrics.value("events_backlog_direct")),
        }
