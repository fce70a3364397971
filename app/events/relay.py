"""The relay: committed ``account_events`` rows -> the Redis stream ``accounts``, at least once, per-user in order.

One relay publishes at a time, whatever the number of API processes and ``accounts relay``
commands: each batch runs in a Postgres transaction that first takes a transaction-level advisory
lock (``pg_try_advisory_xact_lock``); the others find it taken and wait for their next poll. Two
relays sharing the work (``FOR UPDATE SKIP LOCKED``) could each hold one event of the same user and
publish them in the wrong order, so there is no sharing: one relay drains hundreds of events per
round trip, far more than accounts change.

One batch, in one transaction:
1. the oldest unpublished rows by ``(created_at, id)``, plus every older unpublished row of the same
   users (so a user's events never skip a number, whatever the clocks did);
2. appended to the stream in one MULTI/EXEC, each user's events in ``seq`` order;
3. marked published, and committed.

Redis down at step 2: the transaction rolls back, nothing is marked, the batch is retried with
backoff: delayed, never lost. A crash or a lost commit after step 2: the batch is published again
(at least once; consumers drop an event whose ``id`` they have seen, or whose ``seq`` is not above
the last one they applied). The stream keeps entries for ``ACCOUNT_EVENTS_RETENTION_DAYS`` (XADD
MINID), the table keeps published rows as long, then they are pruned.

Erasing an account (``erasure.py``) pauses the relays (:func:`pause_relays`) and withdraws the
account's entries from the stream (:func:`withdraw_entries`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from sqlalchemy import Row, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.background import PollingLoop
from app.core.redis import RedisClient
from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from app.db.models import AccountEvent

logger = logging.getLogger(__name__)

# The stream entry's one field: the event's JSON (docs/account-events.md).
EVENT_FIELD = "event"
BATCH_SIZE = 500
PRUNE_BATCH = 5000
PRUNE_EVERY_SECONDS = 3600.0
WITHDRAW_PAGE = 1000
# Any fixed number: the one advisory lock every relay on this database contends for.
RELAY_LOCK_KEY = 0x4C45_0001_ACC0


def encode_event(row: Row[Any]) -> bytes:
    """The event as consumers read it: docs/account-events.md describes each field."""
    return msgspec.json.encode(
        {
            "id": str(row.id),
            "type": row.type,
            "user_id": row.user_id,
            "seq": row.seq,
            "occurred_at": row.created_at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "data": row.payload,
        }
    )


def in_user_order(rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """``rows`` in their order, except that each user's events fill that user's places in ``seq`` order."""
    by_user: dict[int, list[Row[Any]]] = defaultdict(list)
    for row in rows:
        by_user[row.user_id].append(row)
    queues: dict[int, Iterator[Row[Any]]] = {
        user: iter(sorted(events, key=lambda r: r.seq)) for user, events in by_user.items()
    }
    return [next(queues[row.user_id]) for row in rows]


def _batch_query(limit: int) -> Any:
    unpublished = AccountEvent.published_at.is_(None)
    head = (
        select(AccountEvent.user_id, AccountEvent.seq)
        .where(unpublished)
        .order_by(AccountEvent.created_at, AccountEvent.id)
        .limit(limit)
        .subquery()
    )
    upto = select(head.c.user_id, func.max(head.c.seq).label("seq")).group_by(head.c.user_id).subquery()
    return (
        select(
            AccountEvent.id,
            AccountEvent.user_id,
            AccountEvent.seq,
            AccountEvent.type,
            AccountEvent.payload,
            AccountEvent.created_at,
        )
        .join(upto, and_(AccountEvent.user_id == upto.c.user_id, AccountEvent.seq <= upto.c.seq))
        .where(unpublished)
        .order_by(AccountEvent.created_at, AccountEvent.id)
    )


async def pause_relays(session: AsyncSession) -> None:
    """Wait for the batch in flight, then keep every relay out until ``session``'s transaction ends.

    Erasure needs it: a batch that read a payload before it was scrubbed must not append it after
    the stream was cleaned of the account's entries.
    """
    await session.execute(select(func.pg_advisory_xact_lock(RELAY_LOCK_KEY)))


class _EntryOwner(msgspec.Struct):
    user_id: int
    type: str


_entry_owner = msgspec.json.Decoder(_EntryOwner)


async def withdraw_entries(redis: RedisClient, stream: str, user_id: int, keep_type: str = "account.deleted") -> int:
    """XDEL every entry of ``user_id`` from ``stream`` but its ``keep_type`` event; how many.

    The stream is read through in pages (it holds ACCOUNT_EVENTS_RETENTION_DAYS of every account's
    events), so entries appended twice (the relay publishes at least once) are found as well.
    """
    withdrawn = 0
    start = "-"
    while True:
        page = await redis.xrange(stream, min=start, max="+", count=WITHDRAW_PAGE) or []
        owned: list[Any] = []
        for entry_id, fields in page:
            raw = (fields or {}).get(EVENT_FIELD.encode())
            if entry_id is None or raw is None:
                continue
            try:
                owner = _entry_owner.decode(raw)
            except msgspec.DecodeError:
                continue
            if owner.user_id == user_id and owner.type != keep_type:
                owned.append(entry_id)
        if owned:
            withdrawn += int(await redis.xdel(stream, *owned))
        if len(page) < WITHDRAW_PAGE:
            return withdrawn
        last = page[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


class AccountEventRelay(PollingLoop):
    """Publishes until stopped (:class:`PollingLoop`); outlives outages of Redis and Postgres."""

    name = "account-event-relay"

    def __init__(self, redis: RedisClient, engine: AsyncEngine, keys: KeySpace, settings: Settings) -> None:
        super().__init__()
        self.redis = redis
        self.engine = engine
        self.stream = keys.account_events
        self.poll_seconds = settings.account_events_poll_ms / 1000
        self.retention = datetime.timedelta(days=settings.account_events_retention_days)
        self._next_prune = 0.0

    # ---- one batch ---------------------------------------------------------------------------------

    async def publish_batch(self, limit: int = BATCH_SIZE) -> int | None:
        """Publish the oldest unpublished events; their number, or None when another relay holds the lock."""
        async with self.engine.begin() as conn:
            if not await conn.scalar(select(func.pg_try_advisory_xact_lock(RELAY_LOCK_KEY))):
                return None
            rows = (await conn.execute(_batch_query(limit))).all()
            if not rows:
                return 0
            min_id = f"{int((time.time() - self.retention.total_seconds()) * 1000)}-0"
            async with self.redis.pipeline(transaction=True) as pipe:
                for row in in_user_order(rows):
                    pipe.xadd(self.stream, {EVENT_FIELD: encode_event(row)}, minid=min_id, approximate=True)
                await pipe.execute()
            await conn.execute(
                update(AccountEvent)
                .where(AccountEvent.id.in_([row.id for row in rows]))
                .values(published_at=func.now())
            )
        return len(rows)

    async def publish_pending(self, within_seconds: float = 60.0) -> int:
        """Publish until nothing is left (the CLI's ``--once``, tests); waits out another relay's batch."""
        deadline = time.monotonic() + within_seconds
        total = 0
        while True:
            published = await self.publish_batch()
            if published == 0:
                return total
            if published is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("another relay kept the lock")
                await asyncio.sleep(self.poll_seconds)
                continue
            total += published

    async def prune(self, now: datetime.datetime | None = None) -> int:
        """Delete rows published longer than the retention ago, in short transactions; unpublished rows stay."""
        cutoff = (now or datetime.datetime.now(datetime.UTC)) - self.retention
        total = 0
        while True:
            old = select(AccountEvent.id).where(AccountEvent.published_at < cutoff).limit(PRUNE_BATCH)
            async with self.engine.begin() as conn:
                deleted = (
                    await conn.execute(delete(AccountEvent).where(AccountEvent.id.in_(old.scalar_subquery())))
                ).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # ---- the loop ----------------------------------------------------------------------------------

    async def step(self) -> bool:
        """Prune when due, then publish one batch; idle unless the batch was full."""
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            if pruned := await self.prune():
                logger.info("account events: pruned %d published events", pruned)
        published = await self.publish_batch()
        return published is None or published < BATCH_SIZE
