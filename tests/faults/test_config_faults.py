"""Settings that would run a deployment on test rules, or on a Redis that forgets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from redis.asyncio import Redis

from app.core.embedded import EmbeddedRedis
from app.core.redis import RedisNotPersistent, require_persistence
from app.core.settings import ConfigError, Settings

pytestmark = pytest.mark.slow
SERVERS = {
    "DATABASE_URL": "postgresql://db.example.org/auth",
    "REDIS_URL": "redis://redis.example.org:6379/0",
    "PUBLIC_URL": "https://auth.example.org",
}


def settings_outside_pytest(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Build settings in a process of its own, as `serve` on a host would (no test runner around it)."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    environment.update(env)
    code = "from app.core.settings import Settings; Settings.from_env(); print('accepted')"
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60)


def test_app_env_test_with_weak_secrets_and_server_urls_is_refused_outside_the_suite(tmp_path):
    weak = {"APP_ENV": "test", "JWT_SECRET": "secret", "PIN_PEPPER": "pepper", "DATA_DIR": str(tmp_path), **SERVERS}
    refused = settings_outside_pytest(weak)
    assert refused.returncode != 0 and "accepted" not in refused.stdout
    assert "JWT_SECRET" in refused.stderr and "APP_ENV=test" in refused.stderr

    strong = {**weak, "JWT_SECRET": secrets.token_hex(32), "PIN_PEPPER": secrets.token_hex(32)}
    assert settings_outside_pytest(strong).stdout.strip() == "accepted", "real secrets are accepted"


def test_the_suite_itself_may_run_on_test_secrets():
    settings = Settings.from_env({"APP_ENV": "test", "JWT_SECRET": "j" * 40, "PIN_PEPPER": "p" * 40, **SERVERS})
    assert settings.app_env == "test"
    with pytest.raises(ConfigError, match="too predictable"):
        Settings.from_env({"APP_ENV": "production", "JWT_SECRET": "j" * 40, "PIN_PEPPER": "p" * 40, **SERVERS})


@pytest.mark.parametrize("appendonly", [False, True])
async def test_production_refuses_a_redis_without_persistence(tmp_path, appendonly):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=appendonly)
    url = server.start()
    client = Redis.from_url(url)
    try:
        if appendonly:
            await require_persistence(client)  # accepted
        else:
            with pytest.raises(RedisNotPersistent, match="REDIS_PERSISTENCE_CHECK=off"):
                await require_persistence(client)
    finally:
        await client.aclose()
        server.stop()


def test_the_persistence_check_is_a_setting():
    assert Settings.from_env({"REDIS_PERSISTENCE_CHECK": "off"}).redis_persistence_check == "off"
    with pytest.raises(ConfigError):
        Settings.from_env({"REDIS_PERSISTENCE_CHECK": "maybe"})


async def test_a_production_app_does_not_start_on_a_redis_without_persistence(settings, tmp_path):
    import msgspec
    from litestar.testing import AsyncTestClient

    from app.asgi import create_app

    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    url = server.start()
    try:
        production = msgspec.structs.replace(
            settings, app_env="production", redis_url=url, redis_persistence_check="on"
        )
        with pytest.raises(BaseException) as refused:  # the lifespan wraps it in an exception group
            async with AsyncTestClient(app=create_app(production)):
                pass
        assert isinstance(refused.value, RedisNotPersistent) or refused.group_contains(RedisNotPersistent)
        deliberate = msgspec.structs.replace(production, redis_persistence_check="off")
        async with AsyncTestClient(app=create_app(deliberate)) as client:
            assert (await client.get("/health")).status_code == 200
    finally:
        server.stop()
