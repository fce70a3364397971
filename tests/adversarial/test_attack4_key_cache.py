"""Attack 4: KeyRing.placements() keeps the key schedule until the next instant a key's state can
change. With that cache warm: a rotated-in key must not sign before it activates, must sign once it
has, and a key retired by hand must verify nothing once the ring is re-read (as KeyRingRefresher does)."""

from __future__ import annotations

import asyncpg
import jwt

from app.keys import store
from app.keys.keyring import read_keys
from tests.asgi import in_loop_client
from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

ATTEMPTS = "/api/audit/login-attempts"


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


async def test_rotation_and_retirement_with_a_warm_schedule_cache(app):
    async with in_loop_client(app) as http:
        settings = app.state.settings
        engine = app.state.db_config.get_engine()
        ring = app.state.token_issuer._keys

        async def refresh_ring() -> None:
            ring.replace(await read_keys(engine, settings))

        phone = new_phone()
        account = await registered(http, phone_number=phone)
        db = await asyncpg.connect(plain_dsn(settings))
        try:
            await db.execute("UPDATE users SET role = 'security' WHERE id = $1", account["user_id"])
            old_token = account["access_token"]
            old_kid = kid_of(old_token)
            assert (await http.get(ATTEMPTS, headers=bearer(old_token))).status_code == 200  # cache warm

            async def login() -> str:
                r = await http.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
                assert r.status_code == 200, r.text
                return r.json()["access_token"]

            rotation = await store.rotate(engine, settings)
            new_kid = rotation.kid if hasattr(rotation, "kid") else None
            await refresh_ring()
            assert kid_of(await login()) == old_kid  # published, not signing yet
            jwks = (await http.get("/.well-known/jwks.json")).json()
            published = {key["kid"] for key in jwks["keys"]}
            assert old_kid in published and len(published) == 2
            new_kid = new_kid or (published - {old_kid}).pop()

            # The schedule says the new key signs now (its activation moved into the past).
            await db.execute("UPDATE signing_keys SET activates_at = now() - interval '1 hour' WHERE kid = $1", old_kid)
            await db.execute(
                "UPDATE signing_keys SET activates_at = now() - interval '1 second' WHERE kid = $1", new_kid
            )
            await refresh_ring()
            new_token = await login()
            assert kid_of(new_token) == new_kid
            assert (await http.get(ATTEMPTS, headers=bearer(old_token))).status_code == 200  # retiring: verifies

            await store.retire(engine, settings, old_kid, force=True)
            await refresh_ring()
            assert (await http.get(ATTEMPTS, headers=bearer(old_token))).status_code == 401
            assert (await http.get(ATTEMPTS, headers=bearer(new_token))).status_code == 200
        finally:
            await db.close()
