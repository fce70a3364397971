"""The one place tests make their data: login events, audit rows, accounts."""

from __future__ import annotations

from typing import Any

from app.audit.pipeline.events import LoginEvent, new_event


def login_event(n: int, **changes: Any) -> LoginEvent:
    """The ``n``-th of a varied stream of login events (both outcomes, methods, IPv4 and IPv6)."""
    fields: dict[str, Any] = {
        "phone_number": f"+25078{n:07d}",
        "success": n % 3 == 0,
        "reason": "ok" if n % 3 == 0 else "invalid_credentials",
        "auth_method": "password" if n % 2 else "pin",
        "user_id": n if n % 3 == 0 else None,
        "ip_address": f"10.{n % 7}.0.{n % 250}" if n % 5 else f"2001:db8::{n % 999:x}",
        "user_agent": "LadysEssence/3.1 (Android 12)",
        "request_id": f"req-{n}",
    }
    fields.update(changes)
    return new_event(**fields)
