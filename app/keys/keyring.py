"""The key set every API process holds: it signs with the active key and verifies with any published one.

Loaded from ``signing_keys`` at start-up (a row that cannot be parsed or opened stops start-up,
naming the key) and re-read every SIGNING_KEYS_REFRESH_SECONDS, so a key made by ``keys rotate`` on
any host is in every process well before it signs (app/keys/schedule.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import ServiceUnavailable
from app.core.prometheus import NAMESPACE
from app.core.settings import Settings
from app.db.models import SigningKey
from app.keys.material import KeyMaterialError, PrivateKey, unseal, verifying_key
from app.keys.schedule import PUBLISHED, KeyState, Placement, schedule

logger = logging.getLogger("app.keys")

REFRESH_FAILURES = Counter(
    "signing_keys_refresh_failures",
    "Re-reads of the signing key set that failed (the previous set stays in use), by reason: "
    "unreadable (a row that cannot be opened) or unavailable (Postgres did not answer).",
    ["reason"],
    namespace=NAMESPACE,
)
for _reason in ("unreadable", "unavailable"):
    REFRESH_FAILURES.labels(_reason)  # exposed as 0 from the start, so a first failure is an increase


@dataclass(frozen=True, slots=True)
class LoadedKey:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    verify_key: Any
    private_key: PrivateKey | None
    created_at: datetime.datetime
    activates_at: datetime.datetime
    retired_at: datetime.datetime | None


class NoSigningKey(ServiceUnavailable):
    code = "no_signing_key"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class KeyRing:
    def __init__(self, keys: Sequence[LoadedKey], settings: Settings) -> None:
        self._lifetime = datetime.timedelta(seconds=settings.token_lifetime_seconds)
        self._publish = datetime.timedelta(seconds=settings.key_publish_seconds)
        self.replace(keys)

    def replace(self, keys: Sequence[LoadedKey]) -> None:
        self._keys = {key.kid: key for key in keys}
        self._now_placed: tuple[datetime.datetime, datetime.datetime, dict[str, Placement]] | None = None

    def placements(self, now: datetime.datetime | None = None) -> dict[str, Placement]:
        """Each key's state at ``now`` (by default the present, which is worked out again only when
        a key's state can have changed since: every signed-in request asks, twice on a refresh)."""
        if now is not None:
            return self._schedule(now)
        now = utcnow()
        placed = self._now_placed
        if placed is None or not placed[0] <= now < placed[1]:
            placed = self._now_placed = (now, self._next_change_after(now), self._schedule(now))
        return placed[2]

    def _schedule(self, now: datetime.datetime) -> dict[str, Placement]:
        return schedule(list(self._keys.values()), now, lifetime=self._lifetime, publish=self._publish)

    def _next_change_after(self, now: datetime.datetime) -> datetime.datetime:
        """The first instant after ``now`` at which :func:`schedule` can place a key differently: a
        key activating, or a replaced key retiring (a superset of them: an early recount is harmless)."""
        instants = (
            instant
            for key in self._keys.values()
            if key.retired_at is None
            for instant in (key.activates_at, key.activates_at + self._lifetime + self._publish)
            if instant > now
        )
        return min(instants, default=datetime.datetime.max.replace(tzinfo=datetime.UTC))

    def signer(self) -> LoadedKey:
        for kid, placement in self.placements().items():
            key = self._keys[kid]
            if placement.state is KeyState.ACTIVE and key.private_key is not None:
                return key
        raise NoSigningKey("No signing key is available. Please try again shortly.")

    def verifier(self, kid: str) -> LoadedKey | None:
        """The key for ``kid`` while it is published; None for an unknown, retired or never-published one."""
        key = self._keys.get(kid)
        if key is None or self.placements()[kid].state not in PUBLISHED:
            return None
        return key

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        placements = self.placements()
        published = sorted(
            (key for kid, key in self._keys.items() if placements[kid].state in PUBLISHED),
            key=lambda k: k.activates_at,
            reverse=True,
        )
        return {"keys": [dict(key.public_jwk) for key in published]}


def parse_row(row: Any, secret: str | None) -> LoadedKey:
    """One stored key, checked; KeyMaterialError names it when it cannot be used."""
    public = verifying_key(row.kid, row.alg, row.public_jwk)
    private = None
    if row.private_key is not None:
        if not secret:
            raise KeyMaterialError(f"signing key {row.kid}: SIGNING_KEYS_SECRET is not set")
        private = unseal(row.private_key, row.kid, row.alg, secret)
    return LoadedKey(
        kid=row.kid,
        alg=row.alg,
        public_jwk=dict(row.public_jwk),
        verify_key=public,
        private_key=private,
        created_at=row.created_at,
        activates_at=row.activates_at,
        retired_at=row.retired_at,
    )


async def read_keys(engine: AsyncEngine, settings: Settings) -> list[LoadedKey]:
    """Every key not retired by hand (a retired row has no private half left to check)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(SigningKey.__table__).where(SigningKey.retired_at.is_(None)))).all()
    return [parse_row(row, settings.signing_keys_secret) for row in rows]


async def load_keyring(engine: AsyncEngine, settings: Settings) -> KeyRing:
    """The key set at start-up. Production refuses to start without a key that can sign;
    development and tests make the first one, as they make their other secrets."""
    from app.keys.store import create_first_key

    ring = KeyRing(await read_keys(engine, settings), settings)
    try:
        ring.signer()
    except NoSigningKey:
        if settings.app_env == "production":
            raise KeyMaterialError(
                "no signing key can sign: run `ladys-essence keys rotate` (with the same SIGNING_KEYS_SECRET)"
            ) from None
        await create_first_key(engine, settings)
        ring.replace(await read_keys(engine, settings))
        ring.signer()
    return ring


class KeyRingRefresher:
    """Re-reads the key set every SIGNING_KEYS_REFRESH_SECONDS; a failed read keeps the set it has."""

    def __init__(self, ring: KeyRing, engine: AsyncEngine, settings: Settings) -> None:
        self._ring, self._engine, self._settings = ring, engine, settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="signing-keys-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.signing_keys_refresh_seconds)
            try:
                self._ring.replace(await read_keys(self._engine, self._settings))
            except KeyMaterialError as exc:
                REFRESH_FAILURES.labels("unreadable").inc()
                logger.error("signing keys not refreshed, keeping the previous set: %s", exc)
            except Exception as exc:  # Postgres away: the keys in hand keep working
                REFRESH_FAILURES.labels("unavailable").inc()
                logger.warning("signing keys not refreshed, keeping the previous set: %s", type(exc).__name__)
