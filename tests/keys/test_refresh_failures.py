"""A failed re-read of the key set is counted (``ladys_essence_auth_signing_keys_refresh_failures_total``).

The log line alone (``signing keys not refreshed``) was all a deployment had: a process that keeps
failing keeps verifying with an old set, and misses a key rotated in elsewhere.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from prometheus_client import REGISTRY

from app.core.embedded import free_port
from app.core.settings import Settings
from app.db.config import sqlalchemy_config
from app.keys.keyring import KeyRingRefresher, load_keyring

NAME = "ladys_essence_auth_signing_keys_refresh_failures_total"


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value(NAME, {"reason": reason}) or 0.0


async def refresh_until_counted(settings: Settings, database_url: str, reason: str) -> None:
    good = sqlalchemy_config(settings, pool=False).get_engine()
    target = sqlalchemy_config(msgspec.structs.replace(settings, database_url=database_url), pool=False).get_engine()
    ring = await load_keyring(good, settings)
    before = failures(reason)
    refresher = KeyRingRefresher(ring, target, msgspec.structs.replace(settings, signing_keys_refresh_seconds=0))
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while failures(reason) < before + 2:
            assert time.monotonic() < deadline, f"no {reason} failure counted"
            await asyncio.sleep(0.02)
    finally:
        await refresher.stop()
        await good.dispose()
        await target.dispose()
    assert ring.signer() is not None  # the set in hand stays in use


async def test_postgres_unreachable_is_counted_as_unavailable(settings: Settings) -> None:
    await refresh_until_counted(settings, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", "unavailable")


async def test_a_key_that_cannot_be_opened_is_counted_as_unreadable(settings: Settings) -> None:
    wrong_secret = msgspec.structs.replace(settings, signing_keys_secret="another-signing-keys-secret-" + "q" * 32)
    good = sqlalchemy_config(settings, pool=False).get_engine()
    ring = await load_keyring(good, settings)
    await good.dispose()
    before = failures("unreadable")
    target = sqlalchemy_config(settings, pool=False).get_engine()
    refresher = KeyRingRefresher(ring, target, msgspec.structs.replace(wrong_secret, signing_keys_refresh_seconds=0))
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while failures("unreadable") < before + 1:
            assert time.monotonic() < deadline, "no unreadable failure counted"
            await asyncio.sleep(0.02)
    finally:
        await refresher.stop()
        await target.dispose()
