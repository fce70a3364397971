"""The admin tests register many accounts from one client: a registration budget that does not get in the way."""

from __future__ import annotations

import msgspec
import pytest

from app.core.settings import Settings


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides = getattr(request, "param", {}) or {}
    return msgspec.structs.replace(settings, **{"register_limit": 10_000, **overrides})
