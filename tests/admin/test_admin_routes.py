"""The admin panel's account routes against real Postgres and Redis: guards, changes, recovery, unlock."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import uuid

import pytest

from app.admin.recovery import ALPHABET
from app.core.redis import create_redis
from tests.admin.support import AUDITORS, KINDS, PANEL_ADMINS, account_of_kind, login, panel_admin
from tests.helpers import GOOD_PIN, OTHER_PASSWORD, STRONG_PASSWORD, bearer, e164, new_phone, registered

ADMIN = "/api/admin/users"


def _routes(victim_id: int) -> list[tuple[str, str, dict | None, int]]:
    """(method, path, body, status for a panel admin) of every admin route."""
    return [
        ("GET", ADMIN, None, 200),
        ("GET", f"{ADMIN}/{victim_id}", None, 200),
        (
            "POST",
            f"{ADMIN}/create",
            {
                "name": "Claudine Mukamana",
                "phone_number": new_phone(),
                "password": OTHER_PASSWORD,
                "user_type": "health_provider",
            },
            201,
        ),
        ("PATCH", f"{ADMIN}/{victim_id}/change-role", {"user_type": "parent"}, 200),
        ("PATCH", f"{ADMIN}/{victim_id}/reset-password", None, 409),
        ("POST", f"{ADMIN}/{victim_id}/recovery", None, 200),
        ("POST", f"{ADMIN}/{victim_id}/unlock", None, 200),
        ("DELETE", f"{ADMIN}/{victim_id}/sessions/{uuid.uuid4()}", None, 404),
        ("PATCH", f"{ADMIN}/{victim_id}/toggle-status", None, 200),
        ("DELETE", f"{ADMIN}/{victim_id}", None, 200),
    ]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_admin_route_admits_only_panel_admins(client, db, kind):
    headers, _ = await account_of_kind(client, db, kind)
    victim = await registered(client)
    before = await db.fetchrow("SELECT * FROM users WHERE id = $1", victim["user_id"])
    for method, path, body, admin_status in _routes(victim["user_id"]):
        response = await client.request(method, path, json=body, headers=headers)
        expected = admin_status if kind in PANEL_ADMINS else 403
        assert response.status_code == expected, (kind, method, path, response.text)
        assert response.json()["message"]
        unauthenticated = await client.request(method, path, json=body)
        assert unauthenticated.status_code == 401, (method, path)
    if kind not in PANEL_ADMINS:
        assert await db.fetchrow("SELECT * FROM users WHERE id = $1", victim["user_id"]) == before
        assert await db.fetchval("SELECT count(*) FROM admin_actions") == 0


@pytest.mark.parametrize("kind", list(KINDS))
async def test_admin_actions_history_is_for_security_and_admin_roles(client, db, kind):
    headers, _ = await account_of_kind(client, db, kind)
    for path in ("/api/audit/admin-actions", "/api/audit/admin-actions/export"):
        response = await client.get(path, headers=headers)
        assert response.status_code == (200 if kind in AUDITORS else 403), (kind, path, response.text)


async def test_create_then_sign_in(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    body = {
        "name": "Claudine Mukamana",
        "phone_number": phone,
        "password": OTHER_PASSWORD,
        "user_type": "content_writer",
        "email": "Claudine@Example.org",
        "is_active": True,
    }
    created = await client.post(f"{ADMIN}/create", json=body, headers=headers)
    assert created.status_code == 201, created.text
    user = created.json()["user"]
    assert (user["phone_number"], user["user_type"], user["email"]) == (
        e164(phone),
        "content_writer",
        "Claudine@example.org",
    )
    assert "password_hash" not in created.text
    signed_in = await login(client, phone, password=OTHER_PASSWORD)
    assert signed_in.status_code == 200
    assert signed_in.json()["user_type"] == "content_writer"
    event = await db.fetchval("SELECT type FROM account_events WHERE user_id = $1", user["id"])
    assert event == "account.registered"

    again = await client.post(f"{ADMIN}/create", json=body, headers=headers)
    assert again.status_code == 409
    bad = await client.post(
        f"{ADMIN}/create",
        json={"name": "", "phone_number": "12", "password": "password", "user_type": "wizard"},
        headers=headers,
    )
    assert bad.status_code == 400
    assert {item["field"] for item in bad.json()["errors"]} == {"name", "phone_number", "password", "user_type"}


async def test_deactivate_ends_every_session_and_activate_lets_them_back(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    second = (await login(client, phone, password=STRONG_PASSWORD)).json()
    off = await client.patch(f"{ADMIN}/{user['user_id']}/toggle-status", headers=headers)
    assert off.status_code == 200
    assert off.json()["user"]["is_active"] is False
    for tokens in (user, second):
        assert (await client.get("/api/auth/profile", headers=bearer(tokens["access_token"]))).status_code == 401
        refreshed = await client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
        assert refreshed.status_code == 401
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 401
    types = await db.fetch("SELECT type FROM account_events WHERE user_id = $1 ORDER BY seq", user["user_id"])
    assert types[-1]["type"] == "account.deactivated"

    on = await client.patch(f"{ADMIN}/{user['user_id']}/toggle-status", headers=headers)
    assert on.json()["user"]["is_active"] is True
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 200


async def test_delete_erases_personal_data_keeps_history_and_tells_the_platform(client, db, settings):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone, email="aline@example.org", pin=GOOD_PIN)
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 200
    assert (await login(client, phone, password="not-the-password")).status_code == 401
    history = await _wait_for(db, "SELECT count(*) FROM login_attempts WHERE user_id = $1", user["user_id"], 2)

    deleted = await client.delete(f"{ADMIN}/{user['user_id']}", headers=headers)
    assert deleted.status_code == 200, deleted.text
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1", user["user_id"])
    assert e164(phone) not in json.dumps({key: str(value) for key, value in row.items()})
    assert "Aline" not in row["name"]
    assert row["email"] is None and row["pin_hash"] is None and row["deleted_at"] is not None
    assert not row["password_hash"].startswith("$")
    assert row["is_active"] is False
    assert await db.fetchval("SELECT count(*) FROM login_attempts WHERE user_id = $1", user["user_id"]) == history
    last = await db.fetchrow(
        "SELECT type, payload FROM account_events WHERE user_id = $1 ORDER BY seq DESC LIMIT 1", user["user_id"]
    )
    assert last["type"] == "account.deleted"
    assert (await client.get("/api/auth/profile", headers=bearer(user["access_token"]))).status_code == 401
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 401
    assert (await client.get(f"{ADMIN}/{user['user_id']}", headers=headers)).status_code == 404
    listed = await client.get(ADMIN, params={"per_page": "100"}, headers=headers)
    assert user["user_id"] not in {item["id"] for item in listed.json()["users"]}
    # The number is free again: the person may come back as a new account.
    assert (await registered(client, phone_number=phone))["user_id"] != user["user_id"]


async def _wait_for(db, sql: str, arg: object, at_least: int) -> int:
    for _ in range(100):
        count = await db.fetchval(sql, arg)
        if count >= at_least:
            return int(count)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sql} stayed below {at_least}")


async def test_the_old_reset_button_is_refused_and_says_what_to_do(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    response = await client.patch(f"{ADMIN}/{user['user_id']}/reset-password", headers=headers)
    assert response.status_code == 409
    body = response.json()
    assert body["message"] == body["error"]
    assert "recovery" in body["message"].lower() and "one-time code" in body["message"]
    assert (await login(client, phone, password="password")).status_code == 401
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 200


async def test_recovery_code_signs_in_once_ends_sessions_and_is_stored_hashed(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    issued = await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)
    assert issued.status_code == 200, issued.text
    code = issued.json()["recovery_code"]
    assert len(code.replace("-", "")) == 10 and set(code.replace("-", "")) <= set(ALPHABET)
    stored = await db.fetchrow("SELECT * FROM users WHERE id = $1", user["user_id"])
    assert stored["recovery_hash"].startswith("hmac-sha256$")  # a keyed digest: checking it costs no hash time
    assert code not in json.dumps({key: str(value) for key, value in stored.items()})
    assert (await client.post("/api/auth/refresh", headers=bearer(user["refresh_token"]))).status_code == 401

    first = await login(client, phone, password=code.lower().replace("-", " "))
    assert first.status_code == 200, first.text
    assert (await login(client, phone, password=code)).status_code == 401
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 200


async def test_recovery_code_used_twice_at_once_signs_in_once(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    code = (await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)).json()["recovery_code"]
    results = await asyncio.gather(*(login(client, phone, password=code) for _ in range(4)))
    assert sorted(r.status_code for r in results) == [200, 401, 401, 401]


@pytest.mark.parametrize("settings", [{"account_max_failures": 3, "rate_limit_login_failures": 100}], indirect=True)
async def test_guessing_a_recovery_code_spends_the_numbers_budget(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    code = (await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)).json()["recovery_code"]
    for guess in ("AAAAA-AAAAA", "CCCCC-CCCCC", "DDDDD-DDDDD"):
        assert (await login(client, phone, password=guess)).status_code == 401
    locked = await login(client, phone, password=code)
    assert locked.status_code == 429
    assert locked.json()["code"] == "account_locked"


@pytest.mark.parametrize("settings", [{"pin_max_failures": 3, "rate_limit_login_failures": 100}], indirect=True)
async def test_unlock_lifts_the_pin_lock_but_not_the_clients_budget(client, db, app, settings):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone, pin=GOOD_PIN)
    for _ in range(3):
        assert (await login(client, phone, pin="9513")).status_code == 401
    locked = await login(client, phone, pin=GOOD_PIN)
    assert locked.status_code == 403 and locked.json()["code"] == "pin_locked"
    redis = create_redis(settings)  # the app's own client lives on the test client's loop
    client_budget = app.state.limiter.budget_key("login", "127.0.0.1")
    try:
        failures_before = await redis.zcard(client_budget)
        assert failures_before >= 3

        unlocked = await client.post(f"{ADMIN}/{user['user_id']}/unlock", headers=headers)
        assert unlocked.status_code == 200
        assert unlocked.json()["locks_cleared"] >= 1
        assert await redis.zcard(client_budget) == failures_before
    finally:
        await redis.aclose()
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 200
    row = await db.fetchrow("SELECT * FROM admin_actions WHERE action = 'unlock'")
    assert row["target_user_id"] == user["user_id"]


@pytest.mark.parametrize("settings", [{"pin_max_failures": 3, "rate_limit_login_failures": 100}], indirect=True)
async def test_recovery_also_lifts_the_pin_lock(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone, pin=GOOD_PIN)
    for _ in range(3):
        await login(client, phone, pin="9513")
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 403
    await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 200


async def test_an_admin_cannot_remove_themselves(client, db):
    headers, me = await panel_admin(client, db)
    other_headers, _ = await account_of_kind(client, db, "role_admin")
    for method, suffix, body in (
        ("PATCH", "/toggle-status", None),
        ("PATCH", "/change-role", {"user_type": "parent"}),
        ("DELETE", "", None),
    ):
        response = await client.request(method, f"{ADMIN}/{me['user_id']}{suffix}", json=body, headers=headers)
        assert response.status_code == 409, (suffix, response.text)
        assert response.json()["code"] == "own_account"
        assert response.json()["error"] == response.json()["message"]
    row = await db.fetchrow("SELECT user_type, is_active, deleted_at FROM users WHERE id = $1", me["user_id"])
    assert tuple(row) == ("admin", True, None)
    # An admin (role) may demote support; then they have no panel any more.
    demoted = await client.patch(
        f"{ADMIN}/{me['user_id']}/change-role", json={"user_type": "parent"}, headers=other_headers
    )
    assert demoted.status_code == 200
    assert (await client.get(ADMIN, headers=headers)).status_code == 403


@contextlib.asynccontextmanager
async def admin_services(settings, count: int):
    """``count`` admin services, each on its own database session (its own transaction)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.admin.service import AdminService
    from app.credentials.passwords import Hasher
    from app.db.config import sqlalchemy_config
    from app.ratelimit.limiter import LoginLimiter

    hasher, redis = Hasher(settings), create_redis(settings)
    engine = sqlalchemy_config(settings, pool=False).get_engine()
    sessions = [AsyncSession(engine) for _ in range(count)]
    try:
        yield [AdminService(session, hasher, LoginLimiter(redis, settings), redis, settings) for session in sessions]
    finally:
        for session in sessions:
            await session.close()
        hasher.close()
        await redis.aclose()
        await engine.dispose()


async def test_the_only_admin_is_kept_even_from_the_command_line(client, db, settings):
    from app.admin.service import LastAdmin
    from app.audit.history.query_log import Actor

    _, only = await account_of_kind(client, db, "role_admin")
    await panel_admin(client, db)  # support accounts are not admins: they do not count
    async with admin_services(settings, 1) as (service,):
        with pytest.raises(LastAdmin):
            await service.toggle_status(Actor("ops@host", "cli"), only["user_id"])
    assert await db.fetchval("SELECT is_active FROM users WHERE id = $1", only["user_id"]) is True


REMOVALS = {
    "deactivate": lambda service, actor, target: service.toggle_status(actor, target),
    "delete": lambda service, actor, target: service.delete_user(actor, target),
}


@pytest.mark.parametrize("removal", list(REMOVALS))
async def test_two_admins_removed_at_once_leave_one(client, db, settings, removal):
    """Two removals race for the last two admins: the second waits for the first's row locks, then is refused.

    Without the lock both would count two admins, both go ahead, and no admin would be left.
    """
    from app.admin.service import LastAdmin
    from app.audit.history.query_log import Actor

    first_id = (await account_of_kind(client, db, "role_admin"))[1]["user_id"]
    second_id = (await account_of_kind(client, db, "role_admin"))[1]["user_id"]
    operator = Actor("ops@host", "cli")
    remove = REMOVALS[removal]
    async with admin_services(settings, 2) as (first, second):
        await remove(first, operator, first_id)  # done, not committed: its locks are held
        racing = asyncio.create_task(remove(second, operator, second_id))
        for _ in range(200):  # until the second removal waits on a row lock (or, unlocked, has finished)
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting or racing.done():
                break
            await asyncio.sleep(0.02)
        await first.session.commit()
        with pytest.raises(LastAdmin):
            await racing
    remaining = await db.fetchval(
        "SELECT count(*) FROM users WHERE role = 'admin' AND is_active AND deleted_at IS NULL"
    )
    assert remaining == 1


async def test_every_admin_action_leaves_one_row_that_security_can_read(client, db):
    headers, me = await account_of_kind(client, db, "role_admin")  # only an admin creates a support account
    victim = await registered(client)
    vid = victim["user_id"]
    created = await client.post(
        f"{ADMIN}/create",
        json={"name": "Eric Habimana", "phone_number": new_phone(), "password": OTHER_PASSWORD, "user_type": "admin"},
        headers=headers,
    )
    assert created.status_code == 201
    session_id = (await client.get(f"{ADMIN}/{vid}", headers=headers)).json()["data"]["sessions"][0]["id"]
    steps = [
        ("PATCH", f"/{vid}/change-role", {"user_type": "parent"}, "change_role"),
        ("POST", f"/{vid}/unlock", None, "unlock"),
        ("DELETE", f"/{vid}/sessions/{session_id}", None, "end_session"),
        ("POST", f"/{vid}/recovery", None, "recovery"),
        ("PATCH", f"/{vid}/reset-password", None, "reset_password_refused"),
        ("PATCH", f"/{vid}/toggle-status", None, "deactivate"),
        ("PATCH", f"/{vid}/toggle-status", None, "activate"),
        ("DELETE", f"/{vid}", None, "delete"),
    ]
    for method, suffix, body, _ in steps:
        response = await client.request(method, f"{ADMIN}{suffix}", json=body, headers=headers)
        assert response.status_code < 500, response.text
    rows = await db.fetch("SELECT * FROM admin_actions ORDER BY id")
    assert [row["action"] for row in rows] == ["create"] + [step[3] for step in steps]
    assert {row["actor_user_id"] for row in rows} == {me["user_id"]}
    assert {row["target_user_id"] for row in rows[1:]} == {vid}
    assert rows[0]["target_user_id"] == created.json()["user"]["id"]
    assert {str(row["client_ip"]) for row in rows} == {"127.0.0.1"}
    assert "recovery_code" not in rows[4]["details"]

    security, auditor = await account_of_kind(client, db, "security")
    first = await client.get("/api/audit/admin-actions", params={"limit": "4"}, headers=security)
    assert first.status_code == 200
    page = first.json()
    second = await client.get(
        "/api/audit/admin-actions", params={"limit": "100", "cursor": page["next_cursor"]}, headers=security
    )
    listed = [item["action"] for item in page["items"] + second.json()["items"]]
    assert listed == [row["action"] for row in reversed(rows)]
    only = await client.get("/api/audit/admin-actions", params={"action": "delete,unlock"}, headers=security)
    assert {item["action"] for item in only.json()["items"]} == {"delete", "unlock"}
    bad = await client.get("/api/audit/admin-actions", params={"action": "explode", "since": "soon"}, headers=security)
    assert bad.status_code == 400
    assert {item["field"] for item in bad.json()["errors"]} == {"action", "since"}
    exported = await client.get(
        "/api/audit/admin-actions/export", params={"target_user_id": str(vid)}, headers=security
    )
    assert exported.status_code == 200
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(lines) == len(steps)
    reads = "SELECT count(*) FROM audit_queries WHERE action LIKE 'admin_actions%' AND user_id = $1"
    assert await db.fetchval(reads, auditor["user_id"]) == 4  # the refused read (400) is not one


async def test_after_a_recovery_sign_in_the_user_sets_a_new_password_and_pin_without_the_old_one(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    code = (await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)).json()["recovery_code"]
    signed_in = (await login(client, phone, password=code)).json()
    token = signed_in["access_token"]
    account = (await client.get("/api/settings/bundle", headers=bearer(token))).json()["account"]
    saved = await client.put(
        "/api/settings/account",
        headers=bearer(token),
        json={
            "first_name": account["first_name"],
            "last_name": account["last_name"],
            "phone_number": account["phone_number"],
            "enable_pin_auth": True,
            "new_password": OTHER_PASSWORD,
            "new_pin": GOOD_PIN,
        },
    )
    assert saved.status_code == 200, saved.text
    assert (await login(client, phone, password=OTHER_PASSWORD)).status_code == 200
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 200
    assert (await login(client, phone, password=STRONG_PASSWORD)).status_code == 401
    assert (await login(client, phone, password=code)).status_code == 401


async def test_an_expired_recovery_code_no_longer_signs_in(client, db):
    headers, _ = await panel_admin(client, db)
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    code = (await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)).json()["recovery_code"]
    await db.execute(
        "UPDATE users SET recovery_expires_at = now() - interval '1 second' WHERE id = $1", user["user_id"]
    )
    assert (await login(client, phone, password=code)).status_code == 401


async def test_no_recovery_code_for_a_deactivated_account(client, db):
    headers, _ = await panel_admin(client, db)
    user = await registered(client)
    await client.patch(f"{ADMIN}/{user['user_id']}/toggle-status", headers=headers)
    refused = await client.post(f"{ADMIN}/{user['user_id']}/recovery", headers=headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "account_inactive"
    assert await db.fetchval("SELECT recovery_hash FROM users WHERE id = $1", user["user_id"]) is None
