from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from app.core.settings import Settings
from app.webhooks.deliverer import WebhookDeliverer
from tests.webhooks.support import Receiver


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Backoff in tens of milliseconds, so retries and dead letters take a test a moment, not hours."""
    return msgspec.structs.replace(
        settings,
        webhooks_poll_ms=20,
        webhooks_timeout_seconds=2.0,
        webhooks_retry_base_seconds=0.02,
        webhooks_retry_max_seconds=0.1,
        webhooks_max_attempts=50,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def deliverer(hook_settings: Settings) -> AsyncIterator[WebhookDeliverer]:
    assert hook_settings.database_url
    running = WebhookDeliverer(hook_settings.database_url, hook_settings)
    yield running
    await running.stop()
