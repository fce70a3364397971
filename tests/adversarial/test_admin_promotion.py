"""``users create-admin --promote`` handed a staff role to whoever registered the number first
(issue 17, item 1).

The attack: register a staffer's number in advance; the admin's ``create-admin`` says the number has
an account and suggests ``--promote``; with it, the attacker's session read the whole login history
and the password the admin typed was ignored. Promotion now sets the typed password (and turns the
PIN off), ends every session, asks after showing the account, and leaves an audit entry.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from app.core.settings import Settings
from tests.audit.history.test_cli import run_cli
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, e164, new_phone, registered

ATTACKER_PASSWORD = OTHER_PASSWORD


def promote_args(phone: str, *extra: str) -> list[str]:
    return [
        "users",
        "create-admin",
        "--phone",
        phone,
        "--name",
        "Grace Mukamana",
        "--role",
        "security",
        "--promote",
        *extra,
    ]


async def cli(settings: Settings, tmp_path: Path, args: list[str], stdin: str) -> Any:
    return await asyncio.to_thread(run_cli, settings, tmp_path, args, stdin)


async def test_promotion_takes_the_account_away_from_whoever_registered_it(
    client: Any, db: Any, settings: Settings, tmp_path: Path
) -> None:
    phone = new_phone()
    attacker = await registered(client, phone_number=phone, password=ATTACKER_PASSWORD, pin=GOOD_PIN)
    promoted = await cli(
        settings,
        tmp_path,
        promote_args(phone, "--password-stdin", "--yes-this-account-is-theirs"),
        STRONG_PASSWORD + "\n",
    )
    assert promoted.exit_code == 0, promoted.output
    assert "1 session(s) ended" in promoted.output

    history = "/api/audit/login-attempts"
    assert (await client.get(history, headers=bearer(attacker["access_token"]))).status_code == 401
    stolen_refresh = await client.post("/api/auth/refresh", json={"refresh_token": attacker["refresh_token"]})
    assert stolen_refresh.status_code == 401
    for secret in ({"password": ATTACKER_PASSWORD}, {"pin": GOOD_PIN}):
        assert (await client.post("/api/auth/login", json={"phone_number": phone, **secret})).status_code == 401

    staffer = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert staffer.status_code == 200, staffer.text
    assert (await client.get(history, headers=bearer(staffer.json()["access_token"]))).status_code == 200

    entry = await db.fetchrow("SELECT * FROM audit_queries WHERE action = 'grant_role'")
    assert entry["user_id"] == attacker["user_id"] and entry["origin"] == "cli"
    expected = {"role": "security", "previous_role": "user", "sessions_revoked": 1}
    assert json.loads(entry["filters"]).items() >= expected.items()


async def test_promotion_shows_the_account_and_asks(client: Any, db: Any, settings: Settings, tmp_path: Path) -> None:
    phone = new_phone()
    account = await registered(client, phone_number=phone, password=ATTACKER_PASSWORD)
    await client.post("/api/auth/login", json={"phone_number": phone, "password": ATTACKER_PASSWORD})
    signed_in = "SELECT count(*) FROM login_attempts WHERE success AND phone_number = $1"
    for _ in range(100):  # the audit writer stores the sign-in within its flush interval
        if await db.fetchval(signed_in, e164(phone)):
            break
        await asyncio.sleep(0.1)

    declined = await cli(settings, tmp_path, promote_args(phone), "n\n")
    assert declined.exit_code == 1, declined.output
    for shown in ("created", "last sign-in", "live sessions 2", str(account["user_id"])):
        assert shown in declined.output
    assert "never" not in declined.output.split("last sign-in", 1)[1].splitlines()[0]

    scripted = await cli(settings, tmp_path, promote_args(phone, "--password-stdin"), STRONG_PASSWORD + "\n")
    assert scripted.exit_code == 1 and "--yes-this-account-is-theirs" in scripted.output
    role = "SELECT role FROM users WHERE phone_number = $1"
    assert await db.fetchval(role, e164(phone)) == "user"
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE ended_at IS NOT NULL") == 0

    accepted = await cli(settings, tmp_path, promote_args(phone), f"y\n{STRONG_PASSWORD}\n{STRONG_PASSWORD}\n")
    assert accepted.exit_code == 0, accepted.output
    assert await db.fetchval(role, e164(phone)) == "security"
    assert "2 session(s) ended" in accepted.output
