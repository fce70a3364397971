"""Migration 0011: every refresh-token family becomes a session, and nobody who was signed in is signed out.

A database at 0010 gets the families the old model could hold: live (rotated, with a newer row),
ended by a logout (every row revoked), the survivor of a race with logout-all (a revoked row and a
newer unrevoked one: the attack of issue 21, finding 1), and expired. Its tokens are JWTs minted as
the service minted them then. After the upgrade the app is started on that database: the live
family's tokens still work, the others do not, and the device list shows exactly the live one.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid
from typing import Any

import asyncpg
import jwt
import msgspec
from litestar.testing import AsyncTestClient

from app.asgi import create_app, served
from app.core.postgres import plain_dsn
from app.core.settings import Settings
from app.db import migrations
from tests.conftest import _first_signing_key, from_loopback
from tests.helpers import bearer


def minted(settings: Settings, kind: str, user_id: int, sid: uuid.UUID, jti: uuid.UUID, exp: datetime.datetime) -> str:
    """A token as the service issued it before this change (the Flask-era HS256 form; it still verifies)."""
    assert settings.jwt_secret
    now = datetime.datetime.now(datetime.UTC)
    payload = {
        "sub": str(user_id),
        "type": kind,
        "jti": str(jti),
        "sid": str(sid),
        "role": "user",
        "iat": now - datetime.timedelta(hours=1),
        "nbf": now - datetime.timedelta(hours=1),
        "exp": exp,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "auth_time": int((now - datetime.timedelta(hours=1)).timestamp()),
    }
    return jwt.encode(payload, settings.jwt_secret, algorithm="HS256")


# Each family: its rows as (minutes ago created, expires in days, rotated, revoked reason or None).
FAMILIES: dict[str, list[tuple[int, int, bool, str | None]]] = {
    "live": [(60, 30, True, None), (30, 30, False, None)],
    "logged_out": [(60, 30, True, "logout"), (30, 30, False, "logout")],
    "race_survivor": [(60, 30, True, "logout_all"), (30, 30, False, None)],
    "expired": [(60 * 24 * 40, -10, False, None)],
}


async def fill(conn: asyncpg.Connection, settings: Settings) -> dict[str, dict[str, Any]]:
    # Times are taken now, not at import: the suite may reach this test many minutes after collecting it,
    # and a 10-minute access token minted at import would have expired by then.
    now = datetime.datetime.now(datetime.UTC)
    user_id = await conn.fetchval(
        "INSERT INTO users (name, phone_number, password_hash, user_type, created_at, updated_at) "
        "VALUES ('Aline Uwase', '+250788000001', 'x', 'adolescent', now(), now()) RETURNING id"
    )
    families: dict[str, dict[str, Any]] = {}
    for name, rows in FAMILIES.items():
        sid = uuid.uuid4()
        tokens = []
        for minutes_ago, expires_in_days, rotated, revoked in rows:
            jti = uuid.uuid4()
            created = now - datetime.timedelta(minutes=minutes_ago)
            expires = now + datetime.timedelta(days=expires_in_days)
            token = minted(settings, "refresh", user_id, sid, jti, expires)
            await conn.execute(
                "INSERT INTO refresh_tokens (jti, family_id, user_id, token_hash, expires_at, rotated_at, revoked_at,"
                " revoked_reason, user_agent, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                " $10)",
                jti,
                sid,
                user_id,
                hashlib.sha256(token.encode()).hexdigest(),
                expires,
                created + datetime.timedelta(minutes=1) if rotated else None,
                now - datetime.timedelta(minutes=45) if revoked else None,
                revoked,
                f"{name}-device",
                created,
            )
            tokens.append(token)
        access = minted(settings, "access", user_id, sid, uuid.uuid4(), now + datetime.timedelta(minutes=10))
        families[name] = {"sid": str(sid), "newest_refresh": tokens[-1], "access": access}
    return families


async def check_app(settings: Settings, families: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(profile status with the family's access token, refresh status with its newest refresh token)."""
    await _first_signing_key(settings)
    app = create_app(settings)
    async with AsyncTestClient(app=from_loopback(served(app)), raise_server_exceptions=False) as client:
        answers = {}
        for name, family in families.items():
            profile = await client.get("/api/auth/profile", headers=bearer(family["access"]))
            refresh = await client.post("/api/auth/refresh", headers=bearer(family["newest_refresh"]))
            answers[name] = (profile.status_code, refresh.status_code)
        listed = await client.get("/api/auth/sessions", headers=bearer(families["live"]["access"]))
        answers["listed"] = tuple(s["id"] for s in listed.json()["sessions"])  # type: ignore[assignment]
        return answers


def run(settings: Settings, work: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(plain_dsn(settings.database_url))
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_families_become_sessions_and_the_signed_in_stay_signed_in(base_settings: Settings) -> None:
    with migrations.scratch_database(base_settings) as scratch:
        scratch = msgspec.structs.replace(scratch, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
        migrations.upgrade(scratch, "0010_rollup_channel")
        families = run(scratch, lambda conn: fill(conn, scratch))

        migrations.upgrade(scratch)
        sessions = {
            row["id"]: row
            for row in run(scratch, lambda conn: conn.fetch("SELECT * FROM sessions"))  # type: ignore[arg-type]
        }
        assert len(sessions) == len(FAMILIES)
        by_name = {name: sessions[uuid.UUID(family["sid"])] for name, family in families.items()}
        assert by_name["live"]["ended_at"] is None and by_name["live"]["last_user_agent"] == "live-device"
        assert by_name["logged_out"]["end_reason"] == "logout"
        assert by_name["race_survivor"]["end_reason"] == "logout_all"  # ended when logout-all ran
        assert by_name["expired"]["ended_at"] is None and by_name["expired"]["expires_at"] < datetime.datetime.now(
            datetime.UTC
        )

        answers = asyncio.run(check_app(scratch, families))
        assert answers["live"] == (200, 200)
        for ended in ("logged_out", "race_survivor", "expired"):
            assert answers[ended] == (401, 401), ended
        assert answers["listed"] == (families["live"]["sid"],)

        migrations.downgrade(scratch, "0010_rollup_channel")
        revoked = run(
            scratch,
            lambda conn: conn.fetch(
                "SELECT family_id, bool_and(revoked_at IS NOT NULL) AS ended FROM refresh_tokens GROUP BY family_id"
            ),
        )
        ended = {str(row["family_id"]) for row in revoked if row["ended"]}
        assert ended == {families["logged_out"]["sid"], families["race_survivor"]["sid"]}
