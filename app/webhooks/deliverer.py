"""The deliverer: committed account events -> every endpoint that wants them, signed, at least once, in order per user.

Two steps, both driven from Postgres, so any number of deliverers (one per API process, and
``ladys-essence webhooks deliver``) can run:

1. **Fan-out.** Events the fan-out has not seen (``account_events.fanned_out_at IS NULL``) become one
   ``webhook_deliveries`` row per endpoint that wants their type and existed when they were written.
   One fan-out at a time (a transaction-level advisory lock); like the relay, a batch takes every
   older unseen event of the users it holds, so a user's deliveries always exist as a prefix of
   their ``seq``.
2. **Rounds.** Each endpoint with a delivery due gets a round of its own (an asyncio task): its
   deliverer holds a session-level advisory lock on the endpoint for the round, so one process
   at a time sends to it, and sends each user's *lowest pending* delivery only. An event of a user
   therefore goes out after that user's earlier events to that endpoint were delivered or
   dead-lettered. Each request has a total deadline (WEBHOOKS_TIMEOUT_SECONDS); a refused, failed
   or timed-out request ends the round, and the delivery waits out its backoff. Endpoints never
   wait for each other, and the deliverer has its own connections, so none of this touches a
   request's pool or event loop time beyond the I/O itself.

A failure waits ``base * 2**(failures - 1)`` seconds, capped at WEBHOOKS_RETRY_MAX_SECONDS, +-20 %
jitter; after WEBHOOKS_MAX_ATTEMPTS the delivery is dead (``webhooks dead-letters``, ``replay``).
A crash between a 2xx and recording it sends that event again: receivers dedupe on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Row, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from standardwebhooks.webhooks import Webhook

from app.core.background import PollingLoop
from app.core.settings import Settings, asyncpg_url
from app.events.relay import encode_event
from app.webhooks.sealing import SecretUnreadable, unseal

logger = logging.getLogger(__name__)

FANOUT_BATCH = 1000
DUE_BATCH = 50
ROUND_DELIVERIES = 200  # then the round gives its connection back; the next poll starts another
PRUNE_EVERY_SECONDS = 3600.0
# Advisory locks: the fan-out's (one bigint), and each endpoint's (this class, the endpoint's id).
FANOUT_LOCK_KEY = 0x4C45_0013_FA00
ENDPOINT_LOCK_CLASS = 0x4C45_0013
USER_AGENT = "ladys-essence-webhooks/1"
JITTER = 0.2
_jitter = random.Random()  # noqa: S311 - spreads retries; nothing secret


def backoff_seconds(failures: int, settings: Settings, rng: random.Random | None = None) -> float:
    """The wait after the ``failures``-th failed attempt of one delivery."""
    base = min(settings.webhooks_retry_max_seconds, settings.webhooks_retry_base_seconds * 2.0 ** (failures - 1))
    return base * (rng or _jitter).uniform(1 - JITTER, 1 + JITTER)


def signed_headers(secret: str, msg_id: str, body: bytes, now: datetime.datetime) -> dict[str, str]:
    """Standard Webhooks' three headers; the signature by the reference library."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None  # "HTTP 503", "timeout", "ConnectError": never the URL or a body
    unreachable: bool = False  # no HTTP answer at all: the endpoint is down or hanging; its round ends


class WebhookDeliverer(PollingLoop):
    """Delivers until stopped (:class:`PollingLoop`); each endpoint's round is a task of its own."""

    name = "webhook-deliverer"

    def __init__(self, database_url: str, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__()
        self.settings = settings
        # Its own connections: a round holds one while it waits on an endpoint, and must never take
        # one a sign-in needs. Two kept for the polls; one more per endpoint in a round, and at most
        # WEBHOOKS_CONCURRENCY rounds at once, so hanging endpoints cannot use up Postgres's connections.
        self.concurrency = settings.webhooks_concurrency
        self.engine: AsyncEngine = create_async_engine(
            asyncpg_url(database_url), pool_size=2, max_overflow=self.concurrency, pool_pre_ping=True
        )
        # trust_env=False: the host's HTTP(S)_PROXY and ~/.netrc must not route or add credentials
        # to requests whose destination an operator chose for one receiver.
        self.client = httpx.AsyncClient(
            follow_redirects=False, transport=transport, headers={"user-agent": USER_AGENT}, trust_env=False
        )
        self.timeout = settings.webhooks_timeout_seconds
        self.poll_seconds = settings.webhooks_poll_ms / 1000
        self.retention = datetime.timedelta(days=settings.account_events_retention_days)
        self._rounds: dict[int, asyncio.Task[int | None]] = {}
        self._unreadable: set[int] = set()  # endpoints whose secret does not open with SIGNING_KEYS_SECRET
        self._next_prune = 0.0

    async def close(self) -> None:
        await self.client.aclose()
        await self.engine.dispose()

    # ---- fan-out -------------------------------------------------------------------------------------

    async def fan_out(self, limit: int = FANOUT_BATCH) -> int | None:
        """Make the deliveries of the oldest unseen events; how many events, or None if another fan-out runs."""
        async with self.engine.begin() as conn:
            if not await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FANOUT_LOCK_KEY}):
                return None
            return len((await conn.execute(_FAN_OUT, {"limit": limit})).all())

    async def due_endpoints(self) -> list[int]:
        async with self.engine.connect() as conn:
            return list(await conn.scalars(_DUE_ENDPOINTS))

    # ---- one endpoint's round ------------------------------------------------------------------------

    async def deliver_round(self, endpoint_id: int) -> int | None:
        """Send the endpoint's due deliveries; how many attempts were made, or None if another deliverer has it."""
        async with self.engine.connect() as conn:
            locked = await conn.scalar(_LOCK, {"cls": ENDPOINT_LOCK_CLASS, "id": endpoint_id})
            await conn.commit()
            if not locked:
                return None
            try:
                return await self._round(conn, endpoint_id)
            finally:
                await self._unlock(conn, endpoint_id)

    async def _unlock(self, conn: AsyncConnection, endpoint_id: int) -> None:
        """Give the endpoint back; a connection that cannot is closed, not pooled (its lock goes with it)."""
        try:
            await conn.rollback()
            await conn.execute(_UNLOCK, {"cls": ENDPOINT_LOCK_CLASS, "id": endpoint_id})
            await conn.commit()
        except (SQLAlchemyError, OSError):
            await conn.invalidate()

    async def _round(self, conn: AsyncConnection, endpoint_id: int) -> int:
        endpoint = (await conn.execute(_ENDPOINT, {"id": endpoint_id})).first()
        await conn.commit()
        if endpoint is None:
            return 0  # removed meanwhile
        assert self.settings.signing_keys_secret, "settings are validated before the deliverer starts"
        secret = unseal(endpoint.secret, endpoint_id, self.settings.signing_keys_secret)
        attempts = 0
        while attempts < ROUND_DELIVERIES:
            due = (await conn.execute(_DUE, {"endpoint_id": endpoint_id, "limit": DUE_BATCH})).all()
            await conn.commit()
            if not due:
                break
            for listed in due:
                # Read again just before sending: the batch may be many request timeouts old by now, and
                # meanwhile the endpoint may have been removed, the account erased (its payload
                # scrubbed) or an earlier event of the user replayed.
                delivery = (await conn.execute(_SENDABLE, {"id": listed.delivery_id})).first()
                await conn.commit()
                if delivery is None:
                    continue
                outcome = await self._send(endpoint.url, secret, delivery)
                attempts += 1
                await self._record(conn, delivery, outcome)
                if outcome.unreachable:
                    return attempts
        return attempts

    async def _send(self, url: str, secret: str, delivery: Row[Any]) -> Outcome:
        if delivery.type is None:
            return Outcome(False, "event pruned")
        body = encode_event(delivery)
        headers = signed_headers(secret, str(delivery.id), body, datetime.datetime.now(datetime.UTC))
        headers["content-type"] = "application/json"
        try:
            async with asyncio.timeout(self.timeout):
                # Streamed and closed unread: the answer's status is all that counts, whatever its size.
                async with self.client.stream(
                    "POST", url, content=body, headers=headers, timeout=self.timeout
                ) as answer:
                    status = answer.status_code
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, "timeout", unreachable=True)
        except httpx.HTTPError as exc:
            return Outcome(False, type(exc).__name__, unreachable=True)
        if 200 <= status < 300:
            return Outcome(True)
        return Outcome(False, f"HTTP {status}")

    async def _record(self, conn: AsyncConnection, delivery: Row[Any], outcome: Outcome) -> None:
        failures = delivery.attempts + 1
        if outcome.delivered:
            await conn.execute(_DELIVERED, {"id": delivery.delivery_id})
        elif failures >= self.settings.webhooks_max_attempts or outcome.error == "event pruned":
            await conn.execute(_DEAD, {"id": delivery.delivery_id, "error": outcome.error})
            logger.warning(
                "webhook delivery %s (event %s) dead-lettered after %d attempts: %s",
                delivery.delivery_id,
                delivery.id,
                failures,
                outcome.error,
            )
        else:
            wait = backoff_seconds(failures, self.settings)
            await conn.execute(_RETRY, {"id": delivery.delivery_id, "error": outcome.error, "wait": wait})
        await conn.commit()

    # ---- housekeeping --------------------------------------------------------------------------------

    async def prune(self) -> int:
        """Forget deliveries finished longer than the outbox's retention ago (dead letters included)."""
        cutoff = datetime.datetime.now(datetime.UTC) - self.retention
        async with self.engine.begin() as conn:
            result = await conn.execute(_PRUNE, {"cutoff": cutoff})
        return int(result.rowcount or 0)

    async def run_once(self) -> int:
        """Fan out everything, then one round per endpoint with work due, side by side; attempts made."""
        while await self.fan_out() == FANOUT_BATCH:
            pass
        rounds = await asyncio.gather(*(self.deliver_round(endpoint) for endpoint in await self.due_endpoints()))
        return sum(made or 0 for made in rounds)

    # ---- the loop ------------------------------------------------------------------------------------

    async def step(self) -> bool:
        """Prune when due, fan out, and start a round for each endpoint with work due and none running."""
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            await self.prune()
        while await self.fan_out() == FANOUT_BATCH:
            pass
        self._rounds = {endpoint: task for endpoint, task in self._rounds.items() if not task.done()}
        for endpoint_id in await self.due_endpoints():
            if len(self._rounds) >= self.concurrency:
                break  # the rest wait for a round to end (the next poll)
            if endpoint_id not in self._unreadable and endpoint_id not in self._rounds:
                self._rounds[endpoint_id] = asyncio.get_running_loop().create_task(
                    self._logged_round(endpoint_id), name=f"webhook-endpoint-{endpoint_id}"
                )
        return True

    async def stop(self) -> None:
        """Stop polling, abandon the requests in flight (those deliveries stay pending), close."""
        await super().stop()
        rounds = [round_ for round_ in self._rounds.values() if not round_.done()]
        for round_ in rounds:
            round_.cancel()
        if rounds:
            await asyncio.wait(rounds)
        self._rounds.clear()
        await self.close()

    async def _logged_round(self, endpoint_id: int) -> int | None:
        try:
            return await self.deliver_round(endpoint_id)
        except SecretUnreadable as exc:
            self._unreadable.add(endpoint_id)  # said once: nothing changes until the operator acts
            logger.error("%s: nothing is sent to it; add its URL again for a new secret", exc)  # names no secret
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            logger.warning(
                "webhook endpoint %d: round stopped (%s); next poll retries", endpoint_id, type(exc).__name__
            )
        except Exception:
            logger.exception("webhook endpoint %d: unexpected error in a round", endpoint_id)
        return None


_WANTED = "(e.type = ANY(w.event_types) OR '*' = ANY(w.event_types))"
_FAN_OUT = text(
    f"""
WITH head AS (
    SELECT user_id, seq FROM account_events WHERE fanned_out_at IS NULL ORDER BY created_at, id LIMIT :limit
), upto AS (
    SELECT user_id, max(seq) AS seq FROM head GROUP BY user_id
), batch AS (
    SELECT e.id, e.user_id, e.seq, e.type, e.created_at
    FROM account_events e JOIN upto ON e.user_id = upto.user_id AND e.seq <= upto.seq
    WHERE e.fanned_out_at IS NULL
), made AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_id, user_id, seq)
    SELECT w.id, e.id, e.user_id, e.seq
    FROM batch e JOIN webhook_endpoints w ON {_WANTED} AND e.created_at >= w.created_at
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
)
UPDATE account_events SET fanned_out_at = now() WHERE id IN (SELECT id FROM batch) RETURNING 1
"""  # noqa: S608 - constant fragments
)
# Each user's lowest pending delivery to the endpoint, if its time has come.
_DUE = text(
    """
SELECT d.id AS delivery_id
FROM (
    SELECT DISTINCT ON (user_id) id, next_attempt_at
    FROM webhook_deliveries WHERE endpoint_id = :endpoint_id AND status = 'pending'
    ORDER BY user_id, seq
) d
WHERE d.next_attempt_at <= now()
ORDER BY d.next_attempt_at, d.id
LIMIT :limit
"""
)
# One listed delivery as it is now, with its event; nothing if it is gone, finished, or no longer its
# user's lowest pending delivery to the endpoint.
_SENDABLE = text(
    """
SELECT d.id AS delivery_id, d.attempts, d.event_id AS id, d.user_id, d.seq, e.type, e.payload, e.created_at
FROM webhook_deliveries d LEFT JOIN account_events e ON e.id = d.event_id
WHERE d.id = :id AND d.status = 'pending' AND NOT EXISTS (
    SELECT 1 FROM webhook_deliveries o
    WHERE o.endpoint_id = d.endpoint_id AND o.user_id = d.user_id AND o.status = 'pending' AND o.seq < d.seq
)
"""
)
_DUE_ENDPOINTS = text(
    "SELECT DISTINCT endpoint_id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now()"
)
_ENDPOINT = text("SELECT url, secret FROM webhook_endpoints WHERE id = :id")
_LOCK = text("SELECT pg_try_advisory_lock(CAST(:cls AS int), CAST(:id AS int))")
_UNLOCK = text("SELECT pg_advisory_unlock(CAST(:cls AS int), CAST(:id AS int))")
_DELIVERED = text(
    """
UPDATE webhook_deliveries
SET status = 'delivered', attempts = attempts + 1, last_attempt_at = now(), finished_at = now(), last_error = NULL
WHERE id = :id AND status = 'pending'
"""
)
_DEAD = text(
    """
UPDATE webhook_deliveries
SET status = 'dead', attempts = attempts + 1, last_attempt_at = now(), finished_at = now(), last_error = :error
WHERE id = :id AND status = 'pending'
"""
)
_RETRY = text(
    """
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_attempt_at = now(), last_error = :error,
    next_attempt_at = now() + make_interval(secs => :wait)
WHERE id = :id AND status = 'pending'
"""
)
_PRUNE = text("DELETE FROM webhook_deliveries WHERE finished_at < :cutoff")
