"""A real API process (``python -m app serve``) for the tests that need one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from app.core.embedded import free_port, stop_process
from app.core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, TEST_SIGNING_KEYS_SECRET


def serve_env(settings: Settings, tmp_path: Path, *, redis_url: str | None = None, **env: str) -> dict[str, str]:
    """The environment of a real server process on the test database, with ``env`` on top."""
    return {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": redis_url or settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "SIGNING_KEYS_SECRET": TEST_SIGNING_KEYS_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "WARNING",
        "AUDIT_FLUSH_MS": "50",
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
        "LEGACY_BCRYPT_ROUNDS": "4",
        # One issuer for every process a test starts, as behind a deployment's one URL.
        "PUBLIC_URL": settings.public_url,
        **env,
    }


@contextlib.contextmanager
def api_server(
    settings: Settings,
    tmp_path: Path,
    *,
    redis_url: str | None = None,
    workers: int = 1,
    port: int | None = None,
    **env: str,
) -> Iterator[str]:
    """Serve on ``port`` (a free one if None) with the test database; yields the base URL, stops it afterwards.

    A test whose peers start from the issuer alone picks the port first and passes
    ``PUBLIC_URL=http://127.0.0.1:{port}``: then the issuer is where the server is.
    """
    port = port or free_port()
    environment = serve_env(settings, tmp_path, redis_url=redis_url, **env)
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text())
                time.sleep(0.2)
            yield base
        finally:
            stop_process(process, 20)
