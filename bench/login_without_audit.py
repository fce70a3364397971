"""The API with login auditing switched off: the baseline of bench/bench_audit_overhead.py only.

The service itself has no such switch (every attempt must be audited). Here the two places that
hand a login's event to Redis are given no event, so the limiter's scripts append nothing, and
no audit writer runs. Everything else (routing, limiter, hashing, tokens) is the real app.
"""

from __future__ import annotations

import os
from typing import Any

import app.login.attempt
import app.login.gate
from app.asgi import create_app_from_env


def _no_event(event: Any) -> None:
    return None


def create_app() -> Any:
    app.login.attempt.encode_event = _no_event  # type: ignore[assignment]
    app.login.gate.encode_event = _no_event  # type: ignore[assignment]
    os.environ["AUDIT_WRITER_ENABLED"] = "false"
    return create_app_from_env()
