"""Small facts about requests that several packages read the same way."""

from __future__ import annotations

USER_AGENT_MAX = 255  # the Flask-era column's width, kept by the audit table and the sessions


def user_agent_of(value: str | bytes | None) -> str | None:
    """The ``User-Agent`` as stored: cut to the column's width, ``None`` when absent or empty."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value[:USER_AGENT_MAX] or None if value else None
