"""The questions asked of a session on nearly every request, straight on asyncpg.

Who is signed in (every signed-in request) and the refresh (every app start, every 401 of the
field client) are asked as one prepared statement each on a small asyncpg pool of
their own: no ORM session, no pool pre-ping, no transaction, no reset query on release. Postgres
stays the only source of truth, so an ending, a deactivation or a role change is seen by the very
next request of every process (``tests/sessions/test_two_processes.py``). The definition of live
is the one of :func:`app.sessions.service.live`, written out in SQL here.

Anything the fast statement does not find (an unknown or replaced token, an ended session, a
refresh JWT from before opaque tokens) goes the ORM way (:class:`SessionService`), which knows
every reason and every reaction (reuse detection ends the session).
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from app.core.settings import Settings
from app.db.models import User
from app.ratelimit.coalescer import Coalescer
from app.sessions.tokens import new_refresh_token, token_digest

# A session's last use is written again only when it is this old, or the address or agent changed:
# a refresh burst of the field client writes it once.
LAST_USE_RESOLUTION = datetime.timedelta(seconds=60)

USER_COLUMNS = tuple(attribute.key for attribute in User.__mapper__.column_attrs)

# For every (session, user) asked during one turn of the event loop (``asked``: its place in the
# batch). Each is looked up by its own primary keys (LATERAL ... LIMIT 1 keeps the planner from
# turning the batch into a hash join over whole tables).
SIGNED_IN_USERS = f"""
SELECT asked.place, found.*
FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS asked(session_id, user_id, place)
CROSS JOIN LATERAL (
    SELECT {", ".join("u." + name for name in USER_COLUMNS)}
    FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id = asked.session_id AND u.id = asked.user_id
      AND u.is_active AND s.ended_at IS NULL AND s.expires_at > now()
    LIMIT 1
) AS found
"""  # noqa: S608 - column names from the model, not input

# For every opaque refresh token presented during one turn of the event loop: its session, if live,
# its account active, the token unexpired and not replaced longer ago than the grace; and whether
# the session's last use is stale (then written by itself, see ``refresh_without_rotation``).
REFRESHES_WITHOUT_ROTATION = """
SELECT asked.place, found.*
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS asked(token_hash, ip, agent, place)
CROSS JOIN LATERAL (
    SELECT s.id AS session_id, s.user_id, u.role, u.user_type, s.auth_time,
           (s.last_used_at < now() - $4::interval
            OR s.last_ip IS DISTINCT FROM asked.ip::inet
            OR (asked.agent IS NOT NULL AND s.last_user_agent IS DISTINCT FROM asked.agent)) AS stale
    FROM refresh_tokens t
    JOIN sessions s ON s.id = t.session_id
    JOIN users u ON u.id = s.user_id
    WHERE t.token_hash = asked.token_hash AND t.expires_at > now()
      AND (t.rotated_at IS NULL OR t.rotated_at > now() - $5::interval)
      AND s.ended_at IS NULL AND s.expires_at > now() AND u.is_active
    LIMIT 1
) AS found
"""

# The account a sign-in names, for every phone number presented during one turn of the event loop:
# the one Postgres round trip before the hash (no transaction: one read; no pre-ping).
ACCOUNTS_BY_PHONE = f"""
SELECT asked.place, found.*
FROM unnest($1::text[]) WITH ORDINALITY AS asked(phone_number, place)
CROSS JOIN LATERAL (
    SELECT {", ".join("u." + name for name in USER_COLUMNS)}
    FROM users u WHERE u.phone_number = asked.phone_number
    LIMIT 1
) AS found
"""  # noqa: S608 - column names from the model, not input

RECORD_LAST_USE = """
UPDATE sessions
SET last_used_at = now(), last_ip = $2::text::inet, last_user_agent = coalesce($3::text, last_user_agent)
WHERE id = $1 AND ended_at IS NULL
"""

# The same with rotation, for every rotation asked while the previous batch was in flight, as one
# statement and so one transaction and one durable commit (group commit): SessionService.refresh's
# three statements for each (the conditional UPDATE of the session row, the liveness check, whose
# lock is held until the new token is stored; the token marked replaced; the new token stored).
# The session rows are locked first, in id order, as an ending locks them (SessionService.end):
# two transactions that lock rows of one table in one order cannot deadlock on them, and a
# rotation locks no users row. Only live rows, the ones an ending locks: an ended session is not
# continued anyway, and an account's deletion, which first ends the live ones, then deletes the
# ended ones too (a batch holding one of those while waiting for a live one was a deadlock). An
# ending that commits while the batch waits for a row is seen by the lock's and the UPDATE's
# recheck (READ COMMITTED): that session is not continued. One token presented
# several times (the field client's parallel refreshes) continues its session once and gets a new
# token for each; the last one asked names the session's last address and agent.
REFRESHES_WITH_ROTATION = """
WITH asked AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[])
        WITH ORDINALITY AS a(token_hash, ip, agent, new_jti, new_hash, place)
), token AS (
    -- By key, one probe per token asked (as the header form looks tokens up).
    SELECT asked.*, t.id AS token_id, t.session_id
    FROM asked CROSS JOIN LATERAL (
        SELECT t.id, t.session_id FROM refresh_tokens t
        WHERE t.token_hash = asked.token_hash AND t.expires_at > now()
          AND (t.rotated_at IS NULL OR t.rotated_at > now() - $6::interval)
    ) t
), locked AS MATERIALIZED (
    SELECT s.id FROM sessions s
    WHERE s.id IN (SELECT session_id FROM token) AND s.ended_at IS NULL AND s.expires_at > now()
    ORDER BY s.id FOR NO KEY UPDATE
), latest AS (
    SELECT DISTINCT ON (session_id) session_id, ip, agent FROM token ORDER BY session_id, place DESC
), continued AS (
    UPDATE sessions
    SET last_used_at = now(), last_ip = latest.ip::inet,
        last_user_agent = coalesce(latest.agent, sessions.last_user_agent),
        expires_at = greatest(sessions.expires_at, $7::timestamptz)
    FROM locked, latest, users u
    WHERE sessions.id = locked.id AND latest.session_id = locked.id
      AND sessions.ended_at IS NULL AND sessions.expires_at > now()
      AND u.id = sessions.user_id AND u.is_active
    RETURNING sessions.id AS session_id, sessions.user_id, u.role, u.user_type, sessions.auth_time
), replaced AS (
    UPDATE refresh_tokens SET rotated_at = now(), updated_at = now()
    WHERE id IN (SELECT token.token_id FROM token JOIN continued USING (session_id)) AND rotated_at IS NULL
), stored AS (
    INSERT INTO refresh_tokens (jti, session_id, token_hash, expires_at, created_at, updated_at)
    SELECT token.new_jti, token.session_id, token.new_hash, $7::timestamptz, now(), now()
    FROM token JOIN continued USING (session_id)
)
SELECT token.place, continued.* FROM token JOIN continued USING (session_id)
"""


class UserSnapshot:
    """A ``users`` row with ``User``'s attribute names and nothing of the ORM: building a mapped
    instance took a tenth of a signed-in GET. Not attached to any session; nothing writes it back."""

    __slots__ = USER_COLUMNS

    def __init__(self, row: Mapping[str, Any]) -> None:
        for name in USER_COLUMNS:
            object.__setattr__(self, name, row[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a snapshot of the account is read only ({name})")


@dataclass(frozen=True, slots=True)
class FoundSession:
    user_id: int
    role: str
    session_id: uuid.UUID
    auth_time: datetime.datetime | None
    refresh_token: str | None = None  # the new one, after a rotation
    user_type: str | None = None  # with the role, the new token's scope


@dataclass(frozen=True, slots=True)
class Rotation:
    token_hash: str
    ip_address: str | None
    user_agent: str | None
    new_token_hash: str


class QuietConnection(asyncpg.Connection):  # type: ignore[misc]
    """Nothing to reset on release: these statements hold no transaction, lock, cursor or setting."""

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def session_checks_pool_size(settings: Settings) -> int:
    """Half the ORM pool: batched reads need few connections; rotations (a commit each) take the rest."""
    return max(2, settings.database_pool_size // 2)


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class SessionChecks:
    """The per-request session statements on their own asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.reuse_grace = datetime.timedelta(seconds=settings.refresh_reuse_grace_seconds)
        self.refresh_lifetime = datetime.timedelta(days=settings.refresh_token_days)
        self._signed_in: Coalescer[tuple[uuid.UUID, int]] = Coalescer(self._signed_in_batch, max_batch=256)
        self._refreshes: Coalescer[tuple[str, str | None, str | None]] = Coalescer(self._refresh_batch, max_batch=256)
        self._accounts: Coalescer[str] = Coalescer(self._accounts_batch, max_batch=256)
        # One batch of rotations at a time: those asked meanwhile commit together in the next one.
        self._rotations: Coalescer[Rotation] = Coalescer(self._rotation_batch, max_batch=256, max_in_flight=1)

    @classmethod
    async def open(cls, settings: Settings) -> SessionChecks:
        assert settings.database_url, "database_url is resolved before the app is built"
        pool = await asyncpg.create_pool(
            asyncpg_dsn(settings.database_url),
            min_size=0,  # no floor to restore: asyncpg would retry it, with a traceback, all through an outage
            max_size=session_checks_pool_size(settings),
            connection_class=QuietConnection,
            init=_init_connection,
            # A plan for the arrays and tables as they are at each batch. The generic plan Postgres
            # settles on after five executions is costed on the tables as they were then: made while
            # `sessions` and `refresh_tokens` were small, it scanned a whole index or table per batch
            # ever after (rotations fell from 2,000/s to 600/s as 25,000 tokens accumulated). Planning
            # costs a fraction of a millisecond per batch, not per request.
            # A request never waits for ever behind a lock (``users`` locked for a migration or by
            # hand): past DATABASE_LOCK_TIMEOUT_MS its statement fails with 55P03, a 503 ``busy``.
            server_settings={
                "plan_cache_mode": "force_custom_plan",
                "lock_timeout": str(max(0, settings.database_lock_timeout_ms)),
            },
        )
        assert pool is not None
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.close()

    async def signed_in_user(self, user_id: int, session_id: uuid.UUID) -> User | None:
        """The account of a live session, if active, as a snapshot with ``User``'s attributes (read only).

        The questions asked during one turn of the event loop go to Postgres as one statement: each
        is still answered from the database after it was asked, so nothing is ever stale.
        """
        row: asyncpg.Record | None = await self._signed_in.submit((session_id, user_id))
        if row is None:
            return None
        return cast(User, UserSnapshot(row))

    async def _signed_in_batch(self, asked: Sequence[tuple[uuid.UUID, int]]) -> list[asyncpg.Record | None]:
        rows = await self.pool.fetch(SIGNED_IN_USERS, [q[0] for q in asked], [q[1] for q in asked])
        found: list[asyncpg.Record | None] = [None] * len(asked)
        for row in rows:
            found[row["place"] - 1] = row
        return found

    async def account_by_phone(self, phone_number: str) -> User | None:
        """The account of a phone number (E.164), for a sign-in: a new, unattached ``User`` the
        sign-in may change and hand to the ORM (its row is updated by id, never through this object).

        One statement for the sign-ins of one turn of the event loop, and no transaction: a failed
        sign-in costs Postgres this one round trip before its hash.
        """
        row: asyncpg.Record | None = await self._accounts.submit(phone_number)
        if row is None:
            return None
        return User(**{name: row[name] for name in USER_COLUMNS})

    async def _accounts_batch(self, asked: Sequence[str]) -> list[asyncpg.Record | None]:
        rows = await self.pool.fetch(ACCOUNTS_BY_PHONE, list(asked))
        found: list[asyncpg.Record | None] = [None] * len(asked)
        for row in rows:
            found[row["place"] - 1] = row
        return found

    async def refresh_without_rotation(
        self, token: str, ip_address: str | None, user_agent: str | None
    ) -> FoundSession | None:
        """The live session of an opaque refresh token, its last use recorded; None: ask the ORM way.

        Read with the other refreshes of this turn of the event loop in one statement; the last use
        is written (one row, by itself) only when it is stale. No lock is needed: no token is
        stored, and an ending that commits after the read is seen by the next request's check.
        """
        row: asyncpg.Record | None = await self._refreshes.submit((token_digest(token), ip_address, user_agent))
        if row is None:
            return None
        if row["stale"]:
            await self.pool.execute(RECORD_LAST_USE, row["session_id"], ip_address, user_agent)
        return FoundSession(row["user_id"], row["role"], row["session_id"], row["auth_time"], None, row["user_type"])

    async def _refresh_batch(self, asked: Sequence[tuple[str, str | None, str | None]]) -> list[asyncpg.Record | None]:
        rows = await self.pool.fetch(
            REFRESHES_WITHOUT_ROTATION,
            [q[0] for q in asked],
            [q[1] for q in asked],
            [q[2] for q in asked],
            LAST_USE_RESOLUTION,
            self.reuse_grace,
        )
        found: list[asyncpg.Record | None] = [None] * len(asked)
        for row in rows:
            found[row["place"] - 1] = row
        return found

    async def refresh_with_rotation(
        self, token: str, ip_address: str | None, user_agent: str | None
    ) -> FoundSession | None:
        """Continue the live session of an opaque refresh token with a new token; None: ask the ORM way.

        Committed with the other rotations asked while the previous batch was in flight, in one
        statement: the answer comes once the new token is stored durably, as before.
        """
        new_token = new_refresh_token()
        row: asyncpg.Record | None = await self._rotations.submit(
            Rotation(token_digest(token), ip_address, user_agent, token_digest(new_token))
        )
        if row is None:
            return None
        return FoundSession(
            row["user_id"], row["role"], row["session_id"], row["auth_time"], new_token, row["user_type"]
        )

    async def _rotation_batch(self, asked: Sequence[Rotation]) -> list[asyncpg.Record | None]:
        expires_at = datetime.datetime.now(datetime.UTC) + self.refresh_lifetime
        rows = await self.pool.fetch(
            REFRESHES_WITH_ROTATION,
            [q.token_hash for q in asked],
            [q.ip_address for q in asked],
            [q.user_agent for q in asked],
            [uuid.uuid4() for _ in asked],
            [q.new_token_hash for q in asked],
            self.reuse_grace,
            expires_at,
        )
        found: list[asyncpg.Record | None] = [None] * len(asked)
        for row in rows:
            found[row["place"] - 1] = row
        return found
