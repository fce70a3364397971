"""Access tokens for sessions that do not exist (issue 17, item 2).

Whoever holds the signing key (a deployment that kept a published secret) could mint an access token
with any ``sid``: revocation only refused sessions with a revoked row, so a made-up session was never
rejected. Now a token's session must exist as a live session.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.helpers import bearer, registered


async def test_a_minted_token_with_a_made_up_session_is_refused(client: Any, app: Any) -> None:
    account = await registered(client)
    # Signed with the deployment's own key, as whoever held it could.
    minted = app.state.token_issuer.issue_access(
        auth_time=None, user_id=account["user_id"], role="admin", session_id=uuid.uuid4()
    )
    for path in ("/api/auth/profile", "/api/settings/account", "/api/audit/login-attempts"):
        response = await client.get(path, headers=bearer(minted.token))
        assert response.status_code == 401, (path, response.text)
        assert response.json()["code"] == "invalid_token"


async def test_a_session_whose_refresh_tokens_expired_is_over(client: Any, db: Any) -> None:
    account = await registered(client)
    headers = bearer(account["access_token"])
    assert (await client.get("/api/auth/profile", headers=headers)).status_code == 200
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", account["user_id"]
    )
    assert (await client.get("/api/auth/profile", headers=headers)).status_code == 401


async def test_live_sessions_still_work_after_refreshes(client: Any) -> None:
    account = await registered(client)
    rotated = await client.post("/api/auth/refresh", json={"refresh_token": account["refresh_token"]})
    assert rotated.status_code == 200
    kept = await client.post("/api/auth/refresh", headers=bearer(rotated.json()["refresh_token"]))
    assert kept.status_code == 200
    for token in (account["access_token"], rotated.json()["access_token"], kept.json()["access_token"]):
        assert (await client.get("/api/auth/profile", headers=bearer(token))).status_code == 200
    await client.post("/api/auth/logout", headers=bearer(kept.json()["access_token"]))
    assert (await client.get("/api/auth/profile", headers=bearer(account["access_token"]))).status_code == 401
