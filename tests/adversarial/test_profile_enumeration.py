"""Profile changes enumerated accounts: ``PUT /api/auth/profile {"email": ...}`` answered 409
``email_taken`` for every address that has an account, with no limit (issue 17, item 6).

Now each account may try ``PROFILE_IDENTIFIER_CHANGES`` email / phone changes an hour, whatever the
answer, and every try is in the audit trail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import bearer, new_phone, registered

LIMIT = 3


async def audit_reasons(db: Any, user_id: int, expected: int) -> list[str]:
    """The account's identifier-change rows, once the writer has stored ``expected`` of them (or 10 s)."""
    rows: list[Any] = []
    for _ in range(100):
        rows = await db.fetch(
            "SELECT reason FROM login_attempts WHERE user_id = $1 AND reason LIKE 'identifier%' "
            "OR (user_id = $1 AND reason = 'rate_limited') ORDER BY created_at, id",
            user_id,
        )
        if len(rows) >= expected:
            break
        await asyncio.sleep(0.1)
    return [row["reason"] for row in rows]


@pytest.mark.parametrize("settings", [{"profile_identifier_changes": LIMIT}], indirect=True)
async def test_probing_other_accounts_emails_is_limited_and_audited(client: Any, db: Any) -> None:
    others = [f"person{n}@example.org" for n in range(LIMIT + 2)]
    for email in others:
        await registered(client, email=email)
    prober = await registered(client)
    answers = []
    for email in others:
        response = await client.put("/api/auth/profile", json={"email": email}, headers=bearer(prober["access_token"]))
        answers.append((response.status_code, response.json()["code"]))
    assert answers[:LIMIT] == [(409, "email_taken")] * LIMIT
    assert answers[LIMIT:] == [(429, "rate_limited")] * 2
    assert int(response.headers["Retry-After"]) > 0
    reasons = await audit_reasons(db, prober["user_id"], LIMIT + 2)
    assert reasons == ["identifier_taken"] * LIMIT + ["rate_limited"] * 2


@pytest.mark.parametrize("settings", [{"profile_identifier_changes": LIMIT}], indirect=True)
async def test_changes_that_succeed_count_too_and_other_fields_never_do(client: Any, db: Any) -> None:
    account = await registered(client)
    headers = bearer(account["access_token"])
    for _ in range(LIMIT + 2):
        renamed = await client.put("/api/auth/profile", json={"personal_cycle_length": 28}, headers=headers)
        assert renamed.status_code == 200, renamed.text
    for _ in range(LIMIT):
        changed = await client.put("/api/auth/profile", json={"phone_number": new_phone()}, headers=headers)
        assert changed.status_code == 200, changed.text
    refused = await client.put("/api/auth/profile", json={"phone_number": new_phone()}, headers=headers)
    assert refused.status_code == 429, refused.text
    assert await audit_reasons(db, account["user_id"], LIMIT + 1) == ["identifier_changed"] * LIMIT + ["rate_limited"]
