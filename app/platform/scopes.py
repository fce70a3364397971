"""The scopes a service credential can hold: the one list, checked by the CLI and by every guard."""

from __future__ import annotations

SCOPES: dict[str, str] = {
    "introspect": "POST /api/auth/introspect: is this token still good (sees a logout at once)",
    "users:read": "GET /api/internal/users/{id}: an account's profile fields",
    "ussd": "POST /api/ussd/...: the USSD gateway verifies, sets and registers PINs",
}


def unknown_scopes(requested: list[str] | tuple[str, ...]) -> list[str]:
    return [scope for scope in requested if scope not in SCOPES]
