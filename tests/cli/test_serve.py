"""`ladys-essence serve` from nothing: embedded Postgres and Redis, migrations, and data kept across runs."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.embedded import free_port
from tests.helpers import STRONG_PASSWORD

pytestmark = pytest.mark.slow


def start(data_dir, port):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "JWT_SECRET", "PIN_PEPPER"}}
    env.update(DATA_DIR=str(data_dir), APP_ENV="development", LOG_LEVEL="WARNING")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early:\n{process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("serve did not become healthy in time")


def scrape(base):
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def stop(process, signum=signal.SIGINT):
    process.send_signal(signum)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return output


def test_serve_from_nothing_then_again_finds_the_same_users(tmp_path):
    port = free_port()
    process = start(tmp_path / "data", port)
    try:
        base = f"http://127.0.0.1:{port}"
        docs = httpx.get(f"{base}/schema/openapi.json", timeout=5)
        assert docs.status_code == 200
        register = httpx.post(
            f"{base}/api/auth/register",
            json={"name": "Keza Ineza", "phone_number": "0788 600 700", "password": STRONG_PASSWORD},
            timeout=10,
        )
        assert register.status_code == 201, register.text
        # One worker is served from the instance's metrics directory too: what it counted, one start time.
        labels = (("method", "POST"), ("path", "/api/auth/register"), ("status_code", "201"))
        deadline = time.monotonic() + 5  # counted just after the answer went out
        while (metrics := scrape(base)).get(("ladys_essence_auth_requests_total", labels)) != 1:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        assert [name for name, _ in metrics if name == "process_start_time_seconds"] == ["process_start_time_seconds"]
    finally:
        output = stop(process)
    assert "/schema" in output  # tells the person where the API docs are
    assert process.returncode == 0, output
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()

    process = start(tmp_path / "data", port)
    try:
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/login",
            json={"phone_number": "+250788600700", "password": STRONG_PASSWORD},
            timeout=10,
        )
        assert login.status_code == 200, login.text
    finally:
        output = stop(process, signal.SIGTERM)  # as a service manager or `docker stop` ends it
    # The embedded servers went down with it, not left running as orphans.
    assert process.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), output
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
    assert "ready to exit" in (tmp_path / "data" / "redis" / "redis.log").read_text()
