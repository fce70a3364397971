"""``ladys-essence users recover | unlock --phone ...`` against real Postgres and Redis."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.admin.support import login
from tests.audit.history.test_cli import run_cli
from tests.helpers import GOOD_PIN, bearer, new_phone, registered


async def _cli(settings, tmp_path, *args: str):
    return await asyncio.to_thread(
        run_cli, settings, tmp_path, ["users", *args], REDIS_KEY_PREFIX=settings.redis_key_prefix
    )


async def test_recover_prints_a_code_that_signs_in_once(client, db, settings, tmp_path):
    phone = new_phone()
    user = await registered(client, phone_number=phone)
    result = await _cli(settings, tmp_path, "recover", "--phone", phone)
    assert result.exit_code == 0, result.output
    code = re.search(r"one-time code for \+250\d+: (\S+)", result.output).group(1)
    assert (await client.get("/api/auth/profile", headers=bearer(user["access_token"]))).status_code == 401
    assert (await login(client, phone, password=code)).status_code == 200
    assert (await login(client, phone, password=code)).status_code == 401
    row = await db.fetchrow("SELECT actor, origin, action, target_user_id FROM admin_actions")
    assert (row["origin"], row["action"], row["target_user_id"]) == ("cli", "recovery", user["user_id"])
    assert "@" in row["actor"]


@pytest.mark.parametrize("settings", [{"pin_max_failures": 3, "rate_limit_login_failures": 100}], indirect=True)
async def test_unlock_lifts_a_pin_lock(client, db, settings, tmp_path):
    phone = new_phone()
    await registered(client, phone_number=phone, pin=GOOD_PIN)
    for _ in range(3):
        await login(client, phone, pin="9513")
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 403
    result = await _cli(settings, tmp_path, "unlock", "--phone", phone)
    assert result.exit_code == 0, result.output
    assert "1 lock(s) lifted" in result.output
    assert (await login(client, phone, pin=GOOD_PIN)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM admin_actions WHERE action = 'unlock' AND origin = 'cli'") == 1


async def test_unknown_number_is_a_clean_error(settings, tmp_path):
    result = await _cli(settings, tmp_path, "unlock", "--phone", new_phone())
    assert result.exit_code == 1
    assert "No account has the phone number" in result.output
