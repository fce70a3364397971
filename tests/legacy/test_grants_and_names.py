"""What the import grants (nothing without ``--staff-role``), and names and user types it cleans or lists.

Each test reproduces what the attack on the import found (issue 21, finding 4): a Flask-era
``user_type='admin'`` row became a panel admin with its Flask-era password, names registration
refuses were stored as they were, and an unknown user type arrived that the panel cannot filter on.
"""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from app.accounts.names import name_problem
from app.core.settings import Settings
from app.db.models import USER_TYPES
from tests.helpers import STRONG_PASSWORD, bearer
from tests.legacy import flask_data as fd
from tests.legacy.conftest import import_legacy
from tests.platform.support import arun_cli

ADMIN_PHONE = "+250788100012"


def listed(report: Any, user_id: int) -> list[str]:
    return [item["reason"] for item in report.as_dict()["not_imported"] if item["id"] == user_id]


def changes(report: Any, user_id: int) -> dict[str, dict[str, Any]]:
    return {item["problem"]: item for item in report.as_dict()["changes"] if item["id"] == user_id}


async def sign_in(client: Any, phone: str, password: str) -> Any:
    return await client.post("/api/auth/login", json={"phone_number": phone, "password": password})


async def test_a_flask_admin_without_staff_role_is_not_imported_and_nothing_gets_staff_authority(
    settings: Settings, flask_url: str, flask: asyncpg.Connection, db: asyncpg.Connection, client: Any
) -> None:
    await fd.add_quirks(flask)
    report = await import_legacy(settings, flask_url)

    # The attack: the Flask admin signs in with the Flask-era password and opens the panel.
    signed_in = await sign_in(client, ADMIN_PHONE, STRONG_PASSWORD)
    assert signed_in.status_code == 401
    assert listed(report, fd.ADMIN) == ["staff_role_required"]
    assert await db.fetchval("SELECT count(*) FROM users WHERE user_type = 'admin' OR role <> 'user'") == 0
    # The other staff types carry no authority: imported as they were, role user, their own password.
    for user_id in (fd.CONTENT_WRITER, fd.HEALTH_PROVIDER):
        assert await db.fetchval("SELECT role FROM users WHERE id = $1", user_id) == "user"
    writer = await sign_in(client, "+250788100013", STRONG_PASSWORD)
    assert writer.status_code == 200
    panel = await client.get("/api/admin/users", headers=bearer(writer.json()["access_token"]))
    assert panel.status_code == 403
    staff = {item["id"]: item for item in report.as_dict()["staff"]}
    assert staff[fd.CONTENT_WRITER]["granted"] is None and fd.ADMIN not in staff


async def test_staff_role_grants_without_the_flask_credentials_and_a_rerun_imports_only_the_staff(
    settings: Settings, flask_url: str, flask: asyncpg.Connection, db: asyncpg.Connection, client: Any
) -> None:
    await fd.add_quirks(flask)
    await flask.execute(
        "UPDATE users SET pin_hash = $1, enable_pin_auth = true WHERE id = $2", fd.bcrypt_hash(fd.WEB_PIN), fd.ADMIN
    )
    first = await import_legacy(settings, flask_url)
    assert listed(first, fd.ADMIN) == ["staff_role_required"]

    again = await import_legacy(settings, flask_url, staff_roles={"admin": "admin"})
    assert again.users_inserted == 1 and again.users_already_imported == first.users_inserted
    admin = await db.fetchrow("SELECT * FROM users WHERE id = $1", fd.ADMIN)
    assert (admin["user_type"], admin["role"], admin["phone_number"]) == ("admin", "admin", ADMIN_PHONE)
    # Neither Flask-era secret was trusted: no PIN, and the old password does not sign in.
    assert admin["pin_hash"] is None and not admin["enable_pin_auth"]
    assert admin["password_hash"].startswith("$argon2id$")
    assert (await sign_in(client, ADMIN_PHONE, STRONG_PASSWORD)).status_code == 401
    pin = await client.post("/api/auth/login", json={"phone_number": ADMIN_PHONE, "pin": fd.WEB_PIN})
    assert pin.status_code == 401
    assert "staff_credentials_not_imported" in changes(again, fd.ADMIN)
    (granted,) = [item for item in again.as_dict()["staff"] if item["granted"]]
    assert granted == {"id": fd.ADMIN, "user_type": "admin", "role": "admin", "granted": "admin",
                       "phone_number": ADMIN_PHONE, "credentials": "not_imported"}  # fmt: skip
    grant = await db.fetchrow("SELECT actor, origin, filters FROM audit_queries WHERE action = 'grant_role'")
    assert grant["origin"] == "cli" and json.loads(grant["filters"])["user_id"] == fd.ADMIN

    # The way in: a one-time code from the CLI (recorded), then the panel.
    recovered = await arun_cli(
        settings,
        "users",
        "recover",
        "--phone",
        ADMIN_PHONE,
        REDIS_URL=settings.redis_url or "",
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
    )
    assert recovered.exit_code == 0, recovered.output
    (code,) = re.findall(r"one-time code for [^:]+: (\S+)", recovered.stdout)
    signed_in = await sign_in(client, ADMIN_PHONE, code)
    assert signed_in.status_code == 200, signed_in.text
    panel = await client.get("/api/admin/users", headers=bearer(signed_in.json()["access_token"]))
    assert panel.status_code == 200


async def test_support_grant_keeps_the_panel_type_with_role_user_and_no_credentials(
    settings: Settings, flask_url: str, flask: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    await fd.add_user(flask, fd.ADMIN, phone_number=ADMIN_PHONE, user_type="admin")
    report = await import_legacy(settings, flask_url, staff_roles={"admin": "support"})
    row = await db.fetchrow("SELECT user_type, role, password_hash FROM users WHERE id = $1", fd.ADMIN)
    assert (row["user_type"], row["role"]) == ("admin", "user")
    assert row["password_hash"].startswith("$argon2id$")
    assert report.as_dict()["staff"][0]["granted"] == "support"


NAMES = {
    201: ("Aline\u202eesuaW", "AlineesuaW", "name_refused_characters"),  # right-to-left override
    202: ("Ali\x07ne Uwase", "Aline Uwase", "name_refused_characters"),  # BEL
    203: ("Ali\u200bne", "Aline", "name_refused_characters"),  # zero-width space
    204: ("   ", "", "name_empty"),
    205: ("\u200b \u2066", "", "name_empty"),
    206: ("  Keza\t\tUwase ", "Keza Uwase", "name_whitespace"),
    207: ("Zo\u200dë Mukamana", "Zo\u200dë Mukamana", None),  # a joiner names are written with: kept
}


async def test_names_registration_refuses_are_cleaned_and_listed_never_stored_as_they_were(
    settings: Settings, flask_url: str, flask: asyncpg.Connection, db: asyncpg.Connection
) -> None:
    for user_id, (raw, _, _) in NAMES.items():
        await fd.add_user(flask, user_id, name=raw, phone_number=f"+250788200{user_id}")
    report = await import_legacy(settings, flask_url)

    stored = {r["id"]: r["name"] for r in await db.fetch("SELECT id, name FROM users")}
    for user_id, (raw, cleaned, problem) in NAMES.items():
        assert stored[user_id] == cleaned, raw
        assert name_problem(stored[user_id]) is None
        found = changes(report, user_id)
        if problem is None:
            assert "name" not in {item["field"] for item in found.values()}
        else:
            assert found[problem]["now"] == cleaned
    # The report shows what was refused as escapes, so it reads the same in any viewer.
    text = report.to_json().decode()
    assert not any(ch in text for ch in ("\u202e", "\x07", "\u200b", "\u2066"))
    assert changes(report, 201)["name_refused_characters"]["was"] == "Aline\\u202eesuaW"


async def test_unknown_user_types_are_listed_not_imported_and_case_variants_are_normalised(
    settings: Settings, flask_url: str, flask: asyncpg.Connection, db: asyncpg.Connection, client: Any
) -> None:
    await fd.add_user(flask, 301, phone_number="+250788300301", user_type="superuser")
    await fd.add_user(flask, 302, phone_number="+250788300302", user_type="Parent ")
    await fd.add_user(flask, 303, phone_number="+250788300303", user_type="ADMIN")
    report = await import_legacy(settings, flask_url)

    assert listed(report, 301) == ["user_type_unknown"]
    assert listed(report, 303) == ["staff_role_required"]  # normalised first: still the panel's type
    assert await db.fetchval("SELECT user_type FROM users WHERE id = 302") == "parent"
    assert changes(report, 302)["user_type_normalised"]["now"] == "parent"
    kinds = {r["user_type"] for r in await db.fetch("SELECT DISTINCT user_type FROM users")}
    assert kinds <= set(USER_TYPES)  # every imported account is one the panel's filter can select
    assert (await sign_in(client, "+250788300301", STRONG_PASSWORD)).status_code == 401
