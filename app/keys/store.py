"""Changes to the key set (``ladys-essence keys``): make the first key, rotate, retire, list.

Each change runs in one transaction under an advisory lock, so two operators (or two development
workers starting at once) cannot both create "the next key".
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.settings import Settings
from app.db.models import SigningKey
from app.keys.material import Algorithm, generate, seal, verifying_key
from app.keys.schedule import KeyState, Placement, schedule

LOCK = text("SELECT pg_advisory_xact_lock(hashtext('ladys-essence signing_keys'))")
TABLE = cast(Table, SigningKey.__table__)


class KeyChangeRefused(ValueError):
    """What the operator asked for would break tokens in use; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class KeyListing:
    kid: str
    alg: str
    state: KeyState
    created_at: datetime.datetime
    activates_at: datetime.datetime
    retire_after: datetime.datetime | None
    retired_at: datetime.datetime | None


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _timing(settings: Settings) -> dict[str, datetime.timedelta]:
    return {
        "lifetime": datetime.timedelta(seconds=settings.token_lifetime_seconds),
        "publish": datetime.timedelta(seconds=settings.key_publish_seconds),
    }


async def _rows(conn: AsyncConnection) -> list[KeyListing]:
    rows = (await conn.execute(select(TABLE).order_by(TABLE.c.activates_at, TABLE.c.id))).all()
    return [
        KeyListing(row.kid, row.alg, KeyState.RETIRED, row.created_at, row.activates_at, None, row.retired_at)
        for row in rows
    ]


def _placed(rows: list[KeyListing], settings: Settings, now: datetime.datetime) -> list[KeyListing]:
    placements = schedule(rows, now, **_timing(settings))
    return [_with(row, placements[row.kid]) for row in rows]


def _with(row: KeyListing, placement: Placement) -> KeyListing:
    return KeyListing(
        row.kid, row.alg, placement.state, row.created_at, row.activates_at, placement.retire_after, row.retired_at
    )


async def list_keys(engine: AsyncEngine, settings: Settings) -> list[KeyListing]:
    async with engine.connect() as conn:
        return _placed(await _rows(conn), settings, utcnow())


async def _insert(conn: AsyncConnection, settings: Settings, alg: Algorithm, activates_at: datetime.datetime) -> str:
    assert settings.signing_keys_secret, "settings are validated before keys are made"
    key = generate(alg)
    verifying_key(key.kid, key.alg, key.public_jwk)  # what every process will check when it loads it
    await conn.execute(
        insert(TABLE).values(
            kid=key.kid,
            alg=key.alg,
            public_jwk=key.public_jwk,
            private_key=seal(key.private_key, key.kid, settings.signing_keys_secret),
            created_at=utcnow(),
            activates_at=activates_at,
        )
    )
    return key.kid


async def create_first_key(engine: AsyncEngine, settings: Settings) -> str | None:
    """Development and tests: a key that signs at once, unless another process made one meanwhile."""
    async with engine.begin() as conn:
        await conn.execute(LOCK)
        rows = _placed(await _rows(conn), settings, utcnow())
        if any(row.state is KeyState.ACTIVE for row in rows):
            return None
        return await _insert(conn, settings, settings.jwt_algorithm, utcnow())


async def _retire_expired(conn: AsyncConnection, rows: list[KeyListing], now: datetime.datetime) -> list[str]:
    """Keys whose tokens have all expired: mark them retired and forget their private halves."""
    done = [row.kid for row in rows if row.state is KeyState.RETIRED and row.retired_at is None]
    if done:
        await conn.execute(update(TABLE).where(TABLE.c.kid.in_(done)).values(retired_at=now, private_key=None))
    return done


@dataclass(frozen=True, slots=True)
class Rotation:
    kid: str
    activates_at: datetime.datetime
    retired: list[str]


async def rotate(engine: AsyncEngine, settings: Settings, alg: Algorithm | None = None) -> Rotation:
    """Publish a new key now; it signs after the publish interval (at once when no key can sign yet)."""
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(LOCK)
        rows = _placed(await _rows(conn), settings, now)
        retired = await _retire_expired(conn, rows, now)
        has_active = any(row.state is KeyState.ACTIVE for row in rows)
        activates_at = now + datetime.timedelta(seconds=settings.key_publish_seconds) if has_active else now
        kid = await _insert(conn, settings, alg or settings.jwt_algorithm, activates_at)
    return Rotation(kid, activates_at, retired)


async def retire(engine: AsyncEngine, settings: Settings, kid: str, *, force: bool = False) -> KeyListing:
    """Stop publishing ``kid`` and drop its private half. Refused while tokens it signed may live, unless forced."""
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(LOCK)
        rows = {row.kid: row for row in _placed(await _rows(conn), settings, now)}
        row = rows.get(kid)
        if row is None:
            raise KeyChangeRefused(f"no signing key {kid}")
        if not force and row.state is KeyState.ACTIVE:
            raise KeyChangeRefused(
                f"{kid} is the key that signs now: run `keys rotate` first, or add --force "
                "(every token it signed stops working at once)"
            )
        if not force and row.state is KeyState.RETIRING and row.retire_after is not None:
            raise KeyChangeRefused(
                f"tokens signed by {kid} may live until {row.retire_after.isoformat(timespec='seconds')}; "
                "add --force to end them now (a compromised key)"
            )
        await conn.execute(update(TABLE).where(TABLE.c.kid == kid).values(retired_at=now, private_key=None))
    return _with(row, Placement(KeyState.RETIRED, row.retire_after))
