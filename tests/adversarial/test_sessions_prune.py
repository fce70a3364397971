"""``refresh_tokens`` was never cleaned (issue 17, item 8): expired and revoked rows stayed forever.

``ladys-essence sessions prune`` deletes the sessions (with their refresh tokens) that ended before
the retention period (``AUDIT_RETENTION_DAYS``), keeps recently ended ones for the security team,
and never touches a live session.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.core.settings import Settings
from tests.audit.history.test_cli import run_cli
from tests.helpers import bearer, registered

AGED = {
    "expired_long_ago": "expires_at = now() - interval '400 days'",
    "revoked_long_ago": "ended_at = now() - interval '400 days', end_reason = 'logout'",
    "revoked_recently": "ended_at = now() - interval '10 days', end_reason = 'reuse_detected'",
    "expired_recently": "expires_at = now() - interval '10 days'",
}


async def test_prune_deletes_sessions_ended_before_the_retention_period(
    client: Any, db: Any, settings: Settings, tmp_path: Path
) -> None:
    sessions = {name: await registered(client) for name in [*AGED, "live"]}
    for name, change in AGED.items():
        await db.execute(f"UPDATE sessions SET {change} WHERE user_id = $1", sessions[name]["user_id"])  # noqa: S608
    assert await db.fetchval("SELECT count(*) FROM sessions") == 5

    dry = await asyncio.to_thread(run_cli, settings, tmp_path, ["sessions", "prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "2 sessions" in dry.output and await db.fetchval("SELECT count(*) FROM sessions") == 5

    pruned = await asyncio.to_thread(
        run_cli, settings, tmp_path, ["sessions", "prune", "--batch-size", "1"], AUDIT_RETENTION_DAYS="365"
    )
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 2 sessions" in pruned.output
    left = {row["user_id"] for row in await db.fetch("SELECT user_id FROM sessions")}
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens") == 3  # the pruned sessions' tokens went too
    assert left == {sessions[name]["user_id"] for name in ("revoked_recently", "expired_recently", "live")}
    live = sessions["live"]
    assert (await client.get("/api/auth/profile", headers=bearer(live["access_token"]))).status_code == 200
    refreshed = await client.post("/api/auth/refresh", json={"refresh_token": live["refresh_token"]})
    assert refreshed.status_code == 200

    shorter = await asyncio.to_thread(run_cli, settings, tmp_path, ["sessions", "prune", "--older-than", "5d"])
    assert "deleted 2 sessions" in shorter.output
    assert shorter.exit_code == 0, shorter.output
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    assert await db.fetchval("SELECT count(*) FROM refresh_tokens") == 2  # the live session: its two rows


def test_prune_refuses_a_bad_age(settings: Settings, tmp_path: Path) -> None:
    result = run_cli(settings, tmp_path, ["sessions", "prune", "--older-than", "soon"])
    assert result.exit_code == 2 and "--older-than" in result.output
