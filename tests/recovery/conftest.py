"""Recovery tests: the app's SMS goes to a local stand-in of Africa's Talking, never the network."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from app.core.settings import Settings
from tests.conftest import _truncate
from tests.recovery.stand_in import SmsStandIn


@pytest.fixture
def sms() -> Iterator[SmsStandIn]:
    stand_in = SmsStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def settings(base_settings: Settings, request: pytest.FixtureRequest, sms: SmsStandIn) -> Iterator[Settings]:
    """The suite's settings with SMS through the stand-in; a test's ``param`` overrides on top."""
    overrides: dict[str, Any] = {
        "sms_provider": "africastalking",
        "africastalking_username": "sandbox",
        "africastalking_api_key": "stand-in-key",
        "africastalking_api_url": sms.url,
        "sms_sender_id": "LadysEssence",
        "sms_answer_ms": 150,
        **(getattr(request, "param", {}) or {}),
    }
    prefix = f"le-test:{uuid.uuid4().hex[:12]}:"
    yield msgspec.structs.replace(base_settings, redis_key_prefix=prefix, **overrides).validated()
    asyncio.run(_truncate(base_settings))
