"""The load-test scenarios on Locust: a web UI, CSV/HTML reports, and many machines.

The same scenario table and the same verdict as ``ladys-essence loadtest``; ``ladys-essence
loadtest locust`` prints the commands. Every process numbers its requests under a generator name of
its own (``X-Request-ID: lt-<run>-<generator>.<n>``), so the verdict can tell a missing audit row
from one never sent, however many workers there were. At the end the master (or the single
process) runs ``ladys-essence loadtest verdict`` and exits with its status.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.runners import LocalRunner, MasterRunner

from app.loadtest.scenarios import SCENARIOS, SETUP_STATUSES, Generator, Scenario, ScenarioError, request_headers

logger = logging.getLogger("loadtest")
_plan: dict[str, Any] = {}
_plan_lock = threading.Lock()  # gevent's, once Locust has patched threading


def _arguments(parser: Any) -> None:
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="brute-force", env_var="LOADTEST_SCENARIO")
    parser.add_argument("--run-id", default="", env_var="LOADTEST_RUN_ID", help="Tags every request: lt-<run>-...")
    parser.add_argument(
        "--forwarded",
        action="store_true",
        env_var="LOADTEST_FORWARDED",
        help="The target trusts this machine (TRUSTED_PROXIES): simulate clients by X-Forwarded-For.",
    )
    parser.add_argument("--ussd-token", default="", env_var="LOADTEST_USSD_TOKEN", help="ussd: the gateway credential")
    parser.add_argument("--no-verdict", action="store_true", help="Do not run the verdict at the end.")


def _init(environment: Any, **_: Any) -> None:
    if not environment.stop_timeout:
        environment.stop_timeout = 10  # let each user finish its request: a request cut off is neither sent nor not


def _scenario(user: FastHttpUser) -> Scenario:
    """This process's plan, made once: its generator name, and the scenario's registrations sent."""
    with _plan_lock:
        if "scenario" not in _plan:
            options = user.environment.parsed_options
            if not options.run_id:
                raise ScenarioError("give every process the same --run-id (ladys-essence loadtest locust prints one)")
            generator = Generator(options.run_id, options.scenario, name=secrets.token_hex(3))
            scenario = SCENARIOS[options.scenario](
                generator, forwarding=options.forwarded, ussd_token=options.ussd_token or None
            )
            for planned in scenario.setup():
                headers = request_headers(generator, planned)
                with user.client.post(
                    planned.path, json=planned.body, headers=headers, name=planned.label, catch_response=True
                ) as response:
                    if response.status_code not in SETUP_STATUSES:
                        response.failure(f"setup refused: {response.status_code}")
                        raise ScenarioError(f"{planned.label} refused: {response.status_code} {response.text[:200]}")
                    response.success()
            _plan["scenario"] = scenario
        return _plan["scenario"]  # type: ignore[no-any-return]


class Attacker(FastHttpUser):
    """Sends the scenario's next request, again and again, as fast as the answers come."""

    wait_time = constant(0)

    def on_start(self) -> None:
        try:
            self.plan = _scenario(self)
        except ScenarioError as exc:
            logger.error("loadtest: %s", exc)
            self.environment.runner.quit()
            raise

    @task
    def attack(self) -> None:
        planned = self.plan.next()
        headers = request_headers(self.plan.generator, planned)
        with self.client.post(
            planned.path, json=planned.body, headers=headers, name=planned.label, catch_response=True
        ) as response:
            if response.status_code == 0 or response.status_code >= 500:
                response.failure(f"{response.status_code or 'no answer'}")
            else:
                response.success()  # 401 and 429 are what an attack should get


def _verdict(environment: Any, **_: Any) -> None:
    """The master, or the only process, judges the run from the audit trail and exits with its status."""
    options = environment.parsed_options
    if not isinstance(environment.runner, MasterRunner | LocalRunner) or options.no_verdict or not options.run_id:
        return
    command = [
        sys.executable,
        "-m",
        "app",
        "loadtest",
        "verdict",
        "--run",
        options.run_id,
        "--scenario",
        options.scenario,
    ]
    logger.info("loadtest: %s", " ".join(command))
    result = subprocess.run(command, env=os.environ, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    environment.process_exit_code = result.returncode


events.init_command_line_parser.add_listener(_arguments)  # type: ignore[no-untyped-call]
events.init.add_listener(_init)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_verdict)  # type: ignore[no-untyped-call]
