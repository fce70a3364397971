"""The load-test kit against a real server: its verdict, and that the verdict can fail."""

import io

import pytest

from app.loadtest.runner import Outcome, Run, execute, judge
from tests.servers import api_server

pytestmark = pytest.mark.slow


@pytest.fixture
def trusting_server(settings, tmp_path):
    with api_server(settings, tmp_path, TRUSTED_PROXIES="127.0.0.1/32") as base:
        yield base


def new_run(url, scenario, duration=3.0):
    return Run(
        url=url,
        scenario=scenario,
        duration=duration,
        concurrency=32,
        max_requests=3000,
        pin_max_failures=5,
        account_max_failures=20,
    )


@pytest.mark.parametrize("scenario", ["brute-force", "spray", "stuffing", "mixed"])
async def test_every_scenario_holds_and_is_fully_audited(trusting_server, settings, scenario):
    out = io.StringIO()
    run = new_run(trusting_server, scenario)
    verdict = await execute(run, settings.database_url, out)
    report = out.getvalue()
    print(report)
    assert verdict.ok, report
    assert "verdict: PASS" in report
    assert run.login_attempts() > 50
    for label in ("requests sent:", "answers:", "credentials verified:", "latency p50", "audit rows written"):
        assert label in report


def test_the_verdict_fails_when_a_client_gets_more_guesses_than_its_budget():
    run = new_run("http://127.0.0.1:1", "brute-force")
    run.outcomes = [Outcome("attack", "198.18.0.1", "+250789000001", "password", 401, 0.01, t) for t in range(6)]
    verdict = judge(run, audited=6)
    assert not verdict.ok
    run.outcomes = run.outcomes[:5]
    assert judge(run, audited=5).ok


def test_the_verdict_fails_when_attempts_are_missing_from_the_audit_trail():
    run = new_run("http://127.0.0.1:1", "brute-force")
    run.outcomes = [Outcome("attack", "198.18.0.1", "+250789000001", "password", 429, 0.01, 1.0)] * 10
    assert not judge(run, audited=9).ok
    assert judge(run, audited=10).ok


def test_the_verdict_fails_when_a_real_user_is_locked_out():
    run = new_run("http://127.0.0.1:1", "mixed")
    run.outcomes = [Outcome("legit", "198.18.0.9", "+250789000002", "password", 429, 0.01, 1.0)]
    assert not judge(run, audited=1).ok
