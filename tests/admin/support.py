"""Accounts of every kind for the admin and sessions tests, made through the API."""

from __future__ import annotations

from typing import Any

from tests.helpers import bearer, registered

# The callers every route's guard is tested against: (user_type, role) of the account.
KINDS = {
    "parent": ("parent", "user"),
    "adolescent": ("adolescent", "user"),
    "security": ("adolescent", "security"),
    "admin": ("admin", "user"),  # the admin panel's Flask-era admin accounts: support (docs/authority.md)
    "role_admin": ("parent", "admin"),
}
PANEL_ADMINS = {"admin", "role_admin"}
AUDITORS = {"security", "role_admin"}


async def account_of_kind(client: Any, db: Any, kind: str, **fields: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Register an account, give it the kind's user type and role; its auth headers and registration answer."""
    user_type, role = KINDS[kind]
    account = await registered(client, **fields)
    await db.execute("UPDATE users SET user_type = $1, role = $2 WHERE id = $3", user_type, role, account["user_id"])
    return bearer(account["access_token"]), account


async def panel_admin(client: Any, db: Any) -> tuple[dict[str, str], dict[str, Any]]:
    return await account_of_kind(client, db, "admin")


async def login(client: Any, phone: str, **secret: Any) -> Any:
    return await client.post("/api/auth/login", json={"phone_number": phone, **secret})
