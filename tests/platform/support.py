"""Running ``ladys-essence`` commands in-process against the test database (click's runner)."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner, Result

from app.__main__ import main
from app.core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, TEST_SIGNING_KEYS_SECRET


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.database_url
    return {
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "SIGNING_KEYS_SECRET": TEST_SIGNING_KEYS_SECRET,
        "DATA_DIR": str(settings.data_dir),
        "SIGNING_KEYS_REFRESH_SECONDS": str(settings.signing_keys_refresh_seconds),
        "JWKS_MAX_AGE_SECONDS": str(settings.jwks_max_age_seconds),
        **extra,
    }


def run_cli(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env=cli_env(settings, **env))


async def arun_cli(settings: Settings, *args: str, **env: str) -> Result:
    """The commands run their own event loop: from an async test, in a thread."""
    return await asyncio.to_thread(run_cli, settings, *args, **env)


async def new_credential(settings: Settings, name: str, *scopes: str) -> str:
    options: list[Any] = [item for scope in scopes for item in ("--scope", scope)]
    result = await arun_cli(settings, "services", "create", name, *options)
    assert result.exit_code == 0, result.output
    token: str = result.stdout.strip()
    return token
