"""Publishing a login event from a request: one XADD, or straight to Postgres when Redis refuses.

The request path pays one round trip to Redis; the writer (app/audit/writer.py) moves the entry
into Postgres later. When Redis cannot take the event the request writes the row itself, with the
writer's idempotent insert, so an event that reached Redis after all (a timeout after the command
ran) is still stored once. Only when both stores refuse does the login fail, with 503. A stream at
its share of ``AUDIT_MAX_BACKLOG`` takes nothing more (see ``backlog.py``): the event goes to
Postgres the same way.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.pipeline.events import STREAM_FIELD, LoginEvent, encode_event, storable
from app.audit.pipeline.metrics import AuditMetrics, shared_metrics
from app.audit.pipeline.store import store_events
from app.core.errors import ServiceUnavailable
from app.core.redis import RedisClient
from app.core.redis_keys import BOUNDED_APPEND, KeySpace, stream_share

logger = logging.getLogger(__name__)

# A request must not wait out asyncpg's 60 s default connect timeout when Postgres is unreachable.
DIRECT_WRITE_TIMEOUT_SECONDS = 5.0


class AuditUnavailable(ServiceUnavailable):
    """Neither Redis nor Postgres took the audit event; the login is refused rather than unaudited."""

    code = "audit_unavailable"


class AuditPublisher:
    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        engine: AsyncEngine,
        metrics: AuditMetrics | None = None,
        *,
        direct_timeout: float = DIRECT_WRITE_TIMEOUT_SECONDS,
        max_backlog: int = 1_000_000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.engine = engine
        self.metrics = metrics or shared_metrics()
        self.direct_timeout = direct_timeout
        self.stream_share = stream_share(max_backlog, keys.shards)
        self._append = redis.register_script(BOUNDED_APPEND)

    async def publish(self, event: LoginEvent, shard_identity: str) -> None:
        """Append ``event`` to the stream of ``shard_identity``'s shard (the limiter's client key)."""
        stream = self.keys.audit_stream(self.keys.shard_of(shard_identity))
        try:
            appended = await self._append(keys=[stream], args=[self.stream_share, STREAM_FIELD, encode_event(event)])
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            logger.warning("audit stream unavailable (%s); storing %s directly", type(exc).__name__, event.event_id)
            await self.store_directly(event)
            return
        if not appended:
            await self.store_directly(event, backlog_full=True)
            return
        self.metrics.events_published.inc()

    async def store_directly(self, event: LoginEvent, *, backlog_full: bool = False) -> None:
        """Write ``event`` to ``login_attempts`` now; :class:`AuditUnavailable` if Postgres refuses too.

        Public because the login flow also lands here when the limiter's script (which appends
        the event itself) could not run, or ran and found the stream full (``backlog_full``).
        """
        try:
            await asyncio.wait_for(store_events(self.engine, [storable(event)]), self.direct_timeout)
        except Exception as exc:
            logger.error("audit event %s could not be stored: %s", event.event_id, type(exc).__name__)
            raise AuditUnavailable() from exc
        if backlog_full:
            self.metrics.events_backlog_direct.inc()
        else:
            self.metrics.events_fallback.inc()
