"""The load-test CLI as a user runs it: a subprocess against a real server, and against bad ones."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import msgspec
import pytest

from app.core.embedded import free_port
from app.loadtest import SCENARIOS
from tests.conftest import _truncate
from tests.loadtest.misbehaving import hanging_server
from tests.servers import api_server

pytestmark = pytest.mark.slow

DURATION = 3
SETTLE = 20
# Setup (20 s at most), the load, the drain (--request-timeout), closing, the audit settle: the
# driver's own deadlines. A run that outlives this bound did not end when told.
BOUND = 20 + DURATION + 2 + 10 + SETTLE + 15


@pytest.fixture(scope="module")
def trusting_server(base_settings, tmp_path_factory):
    settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    with api_server(settings, tmp_path_factory.mktemp("loadtest"), TRUSTED_PROXIES="127.0.0.1/32") as base:
        yield base, settings.database_url
    asyncio.run(_truncate(base_settings))


def loadtest(*arguments: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if database_url:
        environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "app", "loadtest", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_ends_when_told_with_a_pass(trusting_server, scenario, tmp_path):
    url, database_url = trusting_server
    ran = loadtest(
        "--url",
        url,
        "--scenario",
        scenario,
        "--duration",
        str(DURATION),
        "--concurrency",
        "16",
        "--request-timeout",
        "2",
        "--settle",
        str(SETTLE),
        "--report",
        str(tmp_path),
        database_url=database_url,
    )
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    assert "verdict: PASS" in report
    assert "request " in report and "p99 ms" in report  # the summary table
    assert "missing 0, written twice 0" in report
    if scenario == "sms-pumping":
        assert "SMS: " in report and " sent for " in report, report  # the SMS budgets were judged
    plots = list(tmp_path.glob("loadtest-*.png"))
    assert plots and plots[0].read_bytes().startswith(b"\x89PNG")


def test_a_server_that_accepts_and_never_answers_ends_the_run_incomplete():
    with hanging_server(answer_health=False) as url:
        ran = loadtest("--url", url, "--duration", str(DURATION), "--settle", "1")
    report = ran.stdout + ran.stderr
    assert ran.returncode == 2, report
    assert "nothing answers at" in report and "ReadTimeout" in report
    assert "verdict: INCOMPLETE" in report


def test_a_server_that_hangs_in_the_middle_of_the_run_ends_it_with_a_fail(trusting_server):
    _, database_url = trusting_server
    # It answers the two probes and the registration, then holds every request.
    with hanging_server(answered_posts=3) as url:
        ran = loadtest(
            "--url",
            url,
            "--duration",
            str(DURATION),
            "--concurrency",
            "8",
            "--request-timeout",
            "2",
            "--settle",
            "1",
            database_url=database_url,
        )
    report = ran.stdout + ran.stderr
    assert ran.returncode == 1, report
    assert "no answer: ReadTimeout" in report
    assert "verdict: FAIL" in report


def test_a_server_that_refuses_connections_ends_the_run_incomplete():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    ran = loadtest("--url", url, "--duration", str(DURATION))
    report = ran.stdout + ran.stderr
    assert ran.returncode == 2, report
    assert "nothing answers at" in report and "ConnectError" in report
    assert "verdict: INCOMPLETE" in report


def test_a_target_that_is_not_this_machine_is_refused_without_allow_remote():
    ran = loadtest("--url", "http://192.0.2.10:8000", "--duration", "1")
    assert ran.returncode == 1
    assert "--allow-remote" in ran.stderr
