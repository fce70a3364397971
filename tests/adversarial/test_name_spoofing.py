"""Names that display as something else than what is stored (issue 17, item 12).

``"\u202eevil"`` registered with 200: a right-to-left override turns what the security team reads in
the login history and the exports around. Format (Cf) and private-use (Co) characters are refused
with control characters (Cc), in every name field and in the admin CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.settings import Settings
from tests.audit.history.test_cli import on_db, run_cli
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

HIDDEN = [
    "\u202e",  # right-to-left override: "Aline\u202eesuwU" displays reversed
    "\u202d",  # left-to-right override
    "\u2066",  # left-to-right isolate
    "\u200b",  # zero-width space
    "\u00ad",  # soft hyphen
    "\ufeff",  # byte order mark
    "\U000e0041",  # tag character: invisible text smuggled into a name
    "\ue000",  # private use
    "\U000f0000",  # supplementary private use
]


def field_errors(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    return {error["field"]: error["message"] for error in body["errors"]}


@pytest.mark.parametrize("hidden", HIDDEN)
async def test_register_refuses_hidden_characters_in_names(client: Any, db: Any, hidden: str) -> None:
    for body in (
        {"name": f"Aline{hidden} Uwase"},
        {"first_name": f"{hidden}Aline", "last_name": "Uwase"},
        {"first_name": "Aline", "last_name": f"Uwase{hidden}"},
    ):
        response = await client.post(
            "/api/auth/register", json={**body, "phone_number": new_phone(), "password": STRONG_PASSWORD}
        )
        assert "name" in field_errors(response)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\ue000"])
async def test_profile_refuses_hidden_characters_in_every_name_field(client: Any, db: Any, hidden: str) -> None:
    account = await registered(client, name="Aline Uwase")
    headers = bearer(account["access_token"])
    for path in ("/api/auth/profile", "/api/settings/account"):
        for field in ("name", "first_name", "last_name"):
            response = await client.put(path, headers=headers, json={field: f"evil{hidden}name"})
            assert field in field_errors(response), (path, field)
    assert await db.fetchval("SELECT name FROM users WHERE id = $1", account["user_id"]) == "Aline Uwase"


@pytest.mark.parametrize("hidden", ["\u202e", "\ue000"])
def test_create_admin_refuses_hidden_characters_in_the_name(settings: Settings, tmp_path: Path, hidden: str) -> None:
    args = ["users", "create-admin", "--phone", "0788555090", "--role", "admin", "--password-stdin"]
    result = run_cli(settings, tmp_path, [*args, "--name", f"Eric{hidden} Habimana"], stdin=STRONG_PASSWORD + "\n")
    assert result.exit_code == 2 and "--name" in result.output
    assert on_db(settings, lambda conn: conn.fetchval("SELECT count(*) FROM users")) == 0
