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


@pytest.mark.parametrize("scenario", ["brute-force", "spray", "stuffing", "mixed", "ussd"])
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


def test_the_ussd_verdict_fails_when_a_session_gets_more_tries_or_a_number_more_pins():
    run = new_run("http://127.0.0.1:1", "ussd")
    phones = [f"+25078900{n:04d}" for n in range(4)]
    run.outcomes = [Outcome("attack", "atk-1", phones[n], "pin", 401, 0.01, n) for n in range(4)]
    assert not judge(run, audited=4).ok  # a 4th wrong PIN verified in one session
    assert judge(run, audited=3).ok is False  # and the audit trail must be complete
    run.outcomes = run.outcomes[:3]
    assert judge(run, audited=3).ok
    run.outcomes = [Outcome("attack", f"atk-{n}", phones[0], "pin", 401, 0.01, n) for n in range(6)]
    assert not judge(run, audited=6).ok  # six wrong PINs verified on one number, over many sessions


def test_the_verdict_fails_when_attempts_are_missing_from_the_audit_trail():
    run = new_run("http://127.0.0.1:1", "brute-force")
    run.outcomes = [Outcome("attack", "198.18.0.1", "+250789000001", "password", 429, 0.01, 1.0)] * 10
    assert not judge(run, audited=9).ok
    assert judge(run, audited=10).ok


def test_the_verdict_fails_when_a_real_user_is_locked_out():
    run = new_run("http://127.0.0.1:1", "mixed")
    run.outcomes = [Outcome("legit", "198.18.0.9", "+250789000002", "password", 429, 0.01, 1.0)]
    assert not judge(run, audited=1).ok


def test_a_refused_real_user_is_named_with_the_answer_they_got():
    run = new_run("http://127.0.0.1:1", "mixed")
    run.outcomes = [
        Outcome("legit", "198.18.0.9", "+250789000002", "password", 200, 0.01, 1.0),
        Outcome("legit", "198.18.0.10", "+250789000003", "password", 429, 0.01, 1.0, "rate_limited"),
    ]
    verdict = judge(run, audited=2)
    assert not verdict.ok and verdict.exit_status == 1
    named = [line for line in verdict.lines if "+250789000003" in line]
    assert named and "429 rate_limited" in named[0] and "198.18.0.10" in named[0]
    assert not any("+250789000002" in line for line in verdict.lines)


def test_a_run_whose_audit_trail_cannot_be_checked_is_incomplete_not_pass():
    run = new_run("http://127.0.0.1:1", "brute-force")
    run.outcomes = [Outcome("attack", "198.18.0.1", "+250789000001", "password", 401, 0.01, 1.0)]
    unchecked = judge(run, audited=None)
    assert unchecked.ok and not unchecked.complete
    assert (unchecked.word, unchecked.exit_status) == ("INCOMPLETE", 2)
    checked = judge(run, audited=1)
    assert (checked.word, checked.exit_status) == ("PASS", 0)
    run.outcomes *= 6  # six verified failures from one client: the limit did not hold
    assert (judge(run, audited=None).word, judge(run, audited=None).exit_status) == ("FAIL", 1)
