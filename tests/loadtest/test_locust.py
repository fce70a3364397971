"""The shipped locustfile: a master and two workers on this machine, then the verdict, which can fail."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest

from app.core.embedded import free_port, stop_process
from tests.conftest import _truncate
from tests.servers import api_server

pytestmark = pytest.mark.slow

# Never imported here: Locust patches the process for gevent, the suite's asyncio would not survive it.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is a dev dependency: make install", allow_module_level=True)
LOCUST = str(Path(sys.executable).with_name("locust"))


@pytest.fixture
def server(base_settings, tmp_path_factory):
    """A real server trusting this machine; ``server(**env)`` starts one with other settings."""
    stack = []

    def start(**env):
        settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
        context = api_server(settings, tmp_path_factory.mktemp("locust"), TRUSTED_PROXIES="127.0.0.1/32", **env)
        stack.append(context)
        return context.__enter__(), settings.database_url

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
    asyncio.run(_truncate(base_settings))


def environment(database_url):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LOADTEST_")}, "DATABASE_URL": database_url}


def printed_commands(*arguments):
    """What `ladys-essence loadtest locust` tells a load-tester to run, one command a line."""
    printed = subprocess.run(
        [sys.executable, "-m", "app", "loadtest", "locust", *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    commands = [shlex.split(line) for line in printed.splitlines() if line and not line.startswith("#")]
    return [[LOCUST, *command[1:]] if command[0] == "locust" else command for command in commands]


def test_locust_master_and_two_workers_then_the_verdict_passes(server, tmp_path):
    url, database_url = server()
    port = str(free_port())
    master, worker, verdict = printed_commands(
        "--url", url, "--scenario", "mixed", "--users", "8", "--duration", "6s", "--workers", "2"
    )
    assert verdict[:3] == ["ladys-essence", "loadtest", "verdict"]
    run_id = verdict[verdict.index("--run") + 1]
    env = environment(database_url)
    workers = [
        subprocess.Popen(
            [*worker, "--master-port", port],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        ran = subprocess.run(
            [*master, "--master-bind-host", "127.0.0.1", "--master-bind-port", port],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        for process in workers:
            stop_process(process, 15)
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    assert "verdict: PASS" in report
    assert "from 2 generator(s)" in report  # each worker numbered its own requests
    assert "real users:" in report

    # The verdict alone, from the trail, as run from another machine with database access.
    again = subprocess.run(
        [sys.executable, "-m", "app", *verdict[1:]], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {run_id}" in again.stdout and "verdict: PASS" in again.stdout


def test_the_verdict_fails_a_run_against_a_server_whose_limit_was_loosened(server, tmp_path):
    # The per-client budget is 5 failures; this server allows 50.
    url, database_url = server(RATE_LIMIT_LOGIN_FAILURES="50")
    (command, verdict) = printed_commands(
        "--url", url, "--scenario", "brute-force", "--users", "8", "--duration", "4s", "--workers", "0"
    )
    env = environment(database_url)
    ran = subprocess.run(
        [*command, "--no-verdict"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    judged = subprocess.run(
        [sys.executable, "-m", "app", *verdict[1:]], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert judged.returncode == 1, judged.stdout + judged.stderr
    assert "verdict: FAIL" in judged.stdout
    worst = next(line for line in judged.stdout.splitlines() if "per-client budget 5/" in line)
    assert int(worst.split("verified ")[1].split()[0]) > 5
