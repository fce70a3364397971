"""``GET /metrics`` was public (issue 17, item 13): anyone could read the service's counters.

It now needs ``Authorization: Bearer $METRICS_TOKEN``; production without a token refuses it.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from app.core.settings import ConfigError, Settings
from tests.helpers import bearer

TOKEN = secrets.token_hex(32)


def refused(response: Any) -> None:
    assert response.status_code == 401, response.text[:200]
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "metrics_token_required"
    assert "ladys_essence" not in response.text


@pytest.mark.parametrize("settings", [{"app_env": "production"}], indirect=True)
async def test_production_without_a_token_does_not_serve_metrics(client: Any) -> None:
    refused(await client.get("/metrics"))
    refused(await client.get("/metrics", headers=bearer("anything")))


@pytest.mark.parametrize(
    "settings", [{"metrics_token": TOKEN}, {"metrics_token": TOKEN, "app_env": "production"}], indirect=True
)
async def test_metrics_need_the_token(client: Any) -> None:
    refused(await client.get("/metrics"))
    refused(await client.get("/metrics", headers=bearer(TOKEN[:-1])))
    refused(await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}))
    allowed = await client.get("/metrics", headers=bearer(TOKEN))
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain")
    assert "ladys_essence_auth_audit_events_published_total" in allowed.text


def test_production_refuses_a_guessable_metrics_token() -> None:
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": "postgresql://db.invalid/app",
        "REDIS_URL": "redis://redis.invalid/0",
        "JWT_SECRET": secrets.token_hex(32),
        "PIN_PEPPER": secrets.token_hex(32),
        "SIGNING_KEYS_SECRET": secrets.token_hex(32),
        "CORS_ALLOW_ORIGINS": "https://app.example.org",
        "PUBLIC_URL": "https://auth.example.org",
    }
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        Settings.from_env({**env, "METRICS_TOKEN": "metrics" * 6})
    assert Settings.from_env({**env, "METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
