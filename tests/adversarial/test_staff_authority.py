"""Staff powers follow one order (issue 21, items 2, 3, 10 and 14), attacked through the real app.

2. A support account (the panel's Flask-era ``user_type = 'admin'``, ``role = 'user'``) issued a
   recovery code for a security analyst or an admin, signed in with it and read the login history;
   deactivate, delete and end-session had the same gap.
3. ``change-role {"user_type": "admin"}`` made an account a panel admin while it kept its password,
   PIN and sessions: its existing token reached ``/api/admin/users`` at once.
10. ``create-admin --role security`` made every analyst a panel admin, counted by the last-admin rule.
14. The retired reset button's 409 named a page and a button the panel does not have.

The expected table below is written here from docs/authority.md, not imported from the code.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import Settings
from tests.audit.history.test_cli import run_cli
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, e164, new_phone, registered

ADMIN = "/api/admin/users"
HISTORY = "/api/audit/login-attempts"

# (user_type, role) of each authority, as the accounts are stored.
COLUMNS = {
    "user": ("parent", "user"),
    "support": ("admin", "user"),
    "security": ("adolescent", "security"),
    "admin": ("parent", "admin"),
}
ACTIONS = ("recovery", "deactivate", "activate", "delete", "end_session", "unlock", "change_user_type")
EVERYTHING = frozenset(ACTIONS)
# Who may do what to whom in the panel; every pair not listed may do nothing.
ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("support", "user"): EVERYTHING,
    ("admin", "user"): EVERYTHING,
    ("admin", "support"): EVERYTHING - {"recovery"},  # staff get recovery codes only at a shell
    ("admin", "security"): EVERYTHING - {"recovery"},
}


async def account(client: Any, db: Any, authority: str, **fields: Any) -> dict[str, Any]:
    """A registered account (signed in: one session) with ``authority``'s columns."""
    created = await registered(client, **fields)
    user_type, role = COLUMNS[authority]
    await db.execute("UPDATE users SET user_type = $1, role = $2 WHERE id = $3", user_type, role, created["user_id"])
    return created


async def session_id_of(client: Any, target: dict[str, Any]) -> str:
    listed = await client.get("/api/auth/sessions", headers=bearer(target["access_token"]))
    assert listed.status_code == 200, listed.text
    return str(listed.json()["sessions"][0]["id"])


async def prepare(client: Any, db: Any, action: str, target: dict[str, Any]) -> str | None:
    """What the action needs first: an inactive account to activate, a session id to end."""
    if action == "activate":
        await db.execute("UPDATE users SET is_active = false WHERE id = $1", target["user_id"])
    if action == "end_session":
        return await session_id_of(client, target)
    return None


async def act(client: Any, headers: dict[str, str], action: str, target: dict[str, Any], session_id: Any) -> Any:
    target_id = target["user_id"]
    if action == "recovery":
        return await client.post(f"{ADMIN}/{target_id}/recovery", headers=headers)
    if action in ("deactivate", "activate"):
        return await client.patch(f"{ADMIN}/{target_id}/toggle-status", headers=headers)
    if action == "delete":
        return await client.delete(f"{ADMIN}/{target_id}", headers=headers)
    if action == "end_session":
        return await client.delete(f"{ADMIN}/{target_id}/sessions/{session_id}", headers=headers)
    if action == "unlock":
        return await client.post(f"{ADMIN}/{target_id}/unlock", headers=headers)
    assert action == "change_user_type"
    return await client.patch(f"{ADMIN}/{target_id}/change-role", json={"user_type": "content_writer"}, headers=headers)


def took_effect(action: str, before: Any, after: Any) -> bool:
    """Whether the users row shows the action done."""
    return {
        "recovery": lambda: after["recovery_hash"] is not None,
        "deactivate": lambda: after["is_active"] is False,
        "activate": lambda: after["is_active"] is True,
        "delete": lambda: after["deleted_at"] is not None,
        "end_session": lambda: True,  # checked on the tokens
        "unlock": lambda: True,  # checked in admin_actions
        "change_user_type": lambda: after["user_type"] == "content_writer",
    }[action]()


@pytest.mark.parametrize("target_authority", list(COLUMNS))
@pytest.mark.parametrize("actor_authority", list(COLUMNS))
async def test_the_authority_table(client: Any, db: Any, actor_authority: str, target_authority: str) -> None:
    actor = await account(client, db, actor_authority)
    headers = bearer(actor["access_token"])
    allowed = ALLOWED.get((actor_authority, target_authority), frozenset())
    for action in ACTIONS:
        target = await account(client, db, target_authority)
        await db.execute("DELETE FROM admin_actions")
        session_id = await prepare(client, db, action, target)
        before = await db.fetchrow("SELECT * FROM users WHERE id = $1", target["user_id"])
        response = await act(client, headers, action, target, session_id)
        after = await db.fetchrow("SELECT * FROM users WHERE id = $1", target["user_id"])
        still_signed_in = await client.get("/api/auth/profile", headers=bearer(target["access_token"]))
        case = (actor_authority, action, target_authority, response.text)
        if action in allowed:
            assert response.status_code == 200, case
            assert took_effect(action, before, after), case
            assert await db.fetchval("SELECT count(*) FROM admin_actions WHERE target_user_id = $1", target["user_id"])
            if action in ("recovery", "deactivate", "delete", "end_session"):
                assert still_signed_in.status_code == 401, case
        else:
            assert response.status_code == 403, case
            answer = response.json()
            assert answer["message"], case
            if actor_authority in ("support", "admin"):  # past the panel's guard: the panel's shape, why in words
                assert (
                    answer["error"] == answer["message"] and answer["code"] == "outranked"
                ) or action == "recovery", case
            assert after == before, case
            assert await db.fetchval("SELECT count(*) FROM admin_actions") == 0, case
            if action != "activate":
                assert still_signed_in.status_code == 200, case


async def test_support_cannot_take_over_the_security_team_or_an_admin(client: Any, db: Any) -> None:
    """Item 2 as found: code, sign in with it, read the history. Every step is refused now."""
    support = bearer((await account(client, db, "support"))["access_token"])
    for authority in ("security", "admin"):
        phone = new_phone()
        staffer = await account(client, db, authority, phone_number=phone)
        for action in ("recovery", "end_session", "deactivate", "delete"):
            refused = await act(client, support, action, staffer, await prepare(client, db, action, staffer))
            assert refused.status_code == 403, (authority, action, refused.text)
        row = await db.fetchrow("SELECT * FROM users WHERE id = $1", staffer["user_id"])
        assert row["recovery_hash"] is None and row["is_active"] and row["deleted_at"] is None
        # The real staff member was not signed out, and still reads the history.
        assert (await client.get(HISTORY, headers=bearer(staffer["access_token"]))).status_code == 200
        signed_in = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
        assert signed_in.status_code == 200
    assert (await client.get(HISTORY, headers=support)).status_code == 403
    # Support still helps users: a code for a plain user signs them in.
    phone = new_phone()
    user = await account(client, db, "user", phone_number=phone)
    issued = await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=support)
    assert issued.status_code == 200, issued.text
    code = issued.json()["recovery_code"]
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "password": code})).status_code == 200


@pytest.mark.parametrize("authority", ["support", "admin"])
async def test_nobody_issues_a_recovery_code_to_themselves(client: Any, db: Any, authority: str) -> None:
    me = await account(client, db, authority)
    refused = await client.post(f"{ADMIN}/{me['user_id']}/recovery", headers=bearer(me["access_token"]))
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "own_account"
    assert await db.fetchval("SELECT recovery_hash FROM users WHERE id = $1", me["user_id"]) is None
    assert (await client.get(ADMIN, headers=bearer(me["access_token"]))).status_code == 200  # not signed out


async def test_staff_are_recovered_at_a_shell_and_it_is_recorded(
    client: Any, db: Any, settings: Settings, tmp_path: Path
) -> None:
    phone = new_phone()
    staffer = await account(client, db, "security", phone_number=phone)
    recovered = await asyncio.to_thread(run_cli, settings, tmp_path, ["users", "recover", "--phone", phone])
    assert recovered.exit_code == 0, recovered.output
    code = recovered.output.split("one-time code for ")[1].split(": ")[1].split()[0]
    assert (await client.get(HISTORY, headers=bearer(staffer["access_token"]))).status_code == 401
    assert (await client.post("/api/auth/login", json={"phone_number": phone, "password": code})).status_code == 200
    row = await db.fetchrow("SELECT * FROM admin_actions WHERE action = 'recovery'")
    assert row["target_user_id"] == staffer["user_id"] and row["origin"] == "cli" and row["actor_user_id"] is None


@pytest.mark.parametrize("granter", ["support", "admin"])
async def test_change_role_to_admin_does_not_hand_over_the_panel(client: Any, db: Any, granter: str) -> None:
    """Item 3: the panel refuses the grant and names the command that does it safely."""
    headers = bearer((await account(client, db, granter))["access_token"])
    victim = await account(client, db, "user", pin=GOOD_PIN)
    before = await db.fetchrow("SELECT * FROM users WHERE id = $1", victim["user_id"])
    refused = await client.patch(
        f"{ADMIN}/{victim['user_id']}/change-role", json={"user_type": "admin"}, headers=headers
    )
    assert refused.status_code == 403, refused.text
    assert "ladys-essence users create-admin --promote" in refused.json()["message"]
    assert await db.fetchrow("SELECT * FROM users WHERE id = $1", victim["user_id"]) == before
    assert (await client.get(ADMIN, headers=bearer(victim["access_token"]))).status_code == 403
    assert (await client.post(f"{ADMIN}/create", json={}, headers=bearer(victim["access_token"]))).status_code == 403


async def test_granting_support_at_the_shell_ends_what_the_account_had(
    client: Any, db: Any, settings: Settings, tmp_path: Path
) -> None:
    """The one way to make an existing account staff: its password, PIN and sessions do not survive."""
    phone = new_phone()
    holder = await account(client, db, "user", phone_number=phone, password=OTHER_PASSWORD, pin=GOOD_PIN)
    args = ["users", "create-admin", "--phone", phone, "--name", "Aline Uwase", "--role", "support", "--promote"]
    promoted = await asyncio.to_thread(
        run_cli, settings, tmp_path, [*args, "--yes-this-account-is-theirs", "--password-stdin"], STRONG_PASSWORD + "\n"
    )
    assert promoted.exit_code == 0, promoted.output
    assert (await client.get(ADMIN, headers=bearer(holder["access_token"]))).status_code == 401
    refreshed = await client.post("/api/auth/refresh", json={"refresh_token": holder["refresh_token"]})
    assert refreshed.status_code == 401
    for secret in ({"password": OTHER_PASSWORD}, {"pin": GOOD_PIN}):
        assert (await client.post("/api/auth/login", json={"phone_number": phone, **secret})).status_code == 401
    staffer = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert staffer.status_code == 200
    listed = await client.get(ADMIN, params={"search": phone}, headers=bearer(staffer.json()["access_token"]))
    assert listed.status_code == 200
    assert listed.json()["users"][0]["authority"] == "support"
    assert (await client.get(HISTORY, headers=bearer(staffer.json()["access_token"]))).status_code == 403
    row = await db.fetchrow("SELECT user_type, role FROM users WHERE id = $1", holder["user_id"])
    assert tuple(row) == ("admin", "user")
    entry = await db.fetchrow("SELECT filters FROM audit_queries WHERE action = 'grant_role'")
    assert json.loads(entry["filters"])["authority"] == "support"


async def test_the_panel_creates_staff_only_below_its_creator(client: Any, db: Any) -> None:
    def body(user_type: str) -> dict[str, Any]:
        return {
            "name": "Eric Habimana",
            "phone_number": new_phone(),
            "password": OTHER_PASSWORD,
            "user_type": user_type,
        }

    support = bearer((await account(client, db, "support"))["access_token"])
    admin = bearer((await account(client, db, "admin"))["access_token"])
    refused = await client.post(f"{ADMIN}/create", json=body("admin"), headers=support)
    assert refused.status_code == 403, refused.text
    assert (await client.post(f"{ADMIN}/create", json=body("content_writer"), headers=support)).status_code == 201
    new_support = body("admin")
    assert (await client.post(f"{ADMIN}/create", json=new_support, headers=admin)).status_code == 201
    signed_in = await client.post(
        "/api/auth/login", json={"phone_number": new_support["phone_number"], "password": OTHER_PASSWORD}
    )
    assert (await client.get(ADMIN, headers=bearer(signed_in.json()["access_token"]))).status_code == 200


async def test_a_security_analyst_made_at_the_shell_has_no_panel(
    client: Any, db: Any, settings: Settings, tmp_path: Path
) -> None:
    """Item 10, for new analysts and for those the old command made (user_type admin)."""
    phone = new_phone()
    args = ["users", "create-admin", "--phone", phone, "--name", "Grace Mukamana", "--role", "security"]
    created = await asyncio.to_thread(run_cli, settings, tmp_path, [*args, "--password-stdin"], STRONG_PASSWORD + "\n")
    assert created.exit_code == 0, created.output
    assert await db.fetchval("SELECT user_type FROM users WHERE phone_number = $1", e164(phone)) != "admin"
    signed_in = await client.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    analyst = bearer(signed_in.json()["access_token"])
    assert (await client.get(HISTORY, headers=analyst)).status_code == 200
    victim = await account(client, db, "user")
    assert (await client.get(ADMIN, headers=analyst)).status_code == 403
    assert (await client.post(f"{ADMIN}/{victim['user_id']}/recovery", headers=analyst)).status_code == 403

    old_style = await account(client, db, "user")
    await db.execute("UPDATE users SET user_type = 'admin', role = 'security' WHERE id = $1", old_style["user_id"])
    old_headers = bearer(old_style["access_token"])
    assert (await client.get(HISTORY, headers=old_headers)).status_code == 200
    assert (await client.post(f"{ADMIN}/{victim['user_id']}/recovery", headers=old_headers)).status_code == 403
    assert await db.fetchval("SELECT recovery_hash FROM users WHERE id = $1", victim["user_id"]) is None


async def test_the_last_admin_rule_counts_only_admins(client: Any, db: Any, settings: Settings, tmp_path: Path) -> None:
    """Analysts and support accounts are no admins: with them around, the only admin is still kept."""
    from app.admin.service import LastAdmin
    from app.audit.history.query_log import Actor
    from tests.admin.test_admin_routes import admin_services

    phone = new_phone()
    only = await account(client, db, "admin", phone_number=phone)
    await account(client, db, "security")
    await db.execute("UPDATE users SET user_type = 'admin' WHERE role = 'security'")  # as the old command made them
    await account(client, db, "support")
    async with admin_services(settings, 1) as (service,):
        with pytest.raises(LastAdmin):
            await service.toggle_status(Actor("ops@host", "cli"), only["user_id"])
    args = ["users", "create-admin", "--phone", phone, "--name", "Eric Habimana", "--role", "security", "--promote"]
    demoted = await asyncio.to_thread(
        run_cli, settings, tmp_path, [*args, "--yes-this-account-is-theirs", "--password-stdin"], OTHER_PASSWORD + "\n"
    )
    assert demoted.exit_code == 1 and "only active admin" in demoted.output
    row = await db.fetchrow("SELECT role, is_active FROM users WHERE id = $1", only["user_id"])
    assert tuple(row) == ("admin", True)


async def test_the_retired_reset_button_names_what_exists(client: Any, db: Any) -> None:
    """Item 14: the panel has no user page and no recovery button; the message names the runbook's command."""
    headers = bearer((await account(client, db, "support"))["access_token"])
    user = await account(client, db, "user")
    answer = await client.patch(f"{ADMIN}/{user['user_id']}/reset-password", headers=headers)
    assert answer.status_code == 409
    message = answer.json()["message"]
    assert "ladys-essence users recover --phone" in message
    assert "open this user" not in message and "'Issue recovery code'" not in message


@pytest.mark.parametrize("authority", ["user", "support", "security", "security_with_panel_user_type"])
async def test_no_staff_route_answers_above_its_callers_authority(
    client: Any, db: Any, app: Any, authority: str
) -> None:
    """Every documented operation of the panel and the audit API, called by each lower authority: 403."""
    old_command = authority == "security_with_panel_user_type"  # what create-admin --role security used to make
    authority = "security" if old_command else authority
    caller_account = await account(client, db, authority)
    if old_command:
        await db.execute("UPDATE users SET user_type = 'admin' WHERE id = $1", caller_account["user_id"])
    caller = bearer(caller_account["access_token"])
    victim = await account(client, db, "user")
    operations = [
        (method, path)
        for path, entries in app.openapi_schema.to_schema()["paths"].items()
        for method in entries
        if path.startswith(("/api/admin/", "/api/audit/"))
    ]
    assert len(operations) >= 15
    reachable = {"support": "/api/admin/", "security": "/api/audit/"}.get(authority)
    for method, template in operations:
        if reachable and template.startswith(reachable) and not template.startswith("/api/audit/queries"):
            continue
        path = template.replace("{user_id}", str(victim["user_id"])).replace("{session_id}", str(uuid.uuid4()))
        body = None if method == "get" else {}
        response = await client.request(method.upper(), path, json=body, headers=caller)
        assert response.status_code == 403, (authority, method, path, response.text)
    row = await db.fetchrow("SELECT is_active, deleted_at, recovery_hash FROM users WHERE id = $1", victim["user_id"])
    assert tuple(row) == (True, None, None)
