"""The verdict's rules on audit rows made by hand: each way a run can fail, and the edge that passes."""

from __future__ import annotations

from app.loadtest.scenarios import Generator, Planned, forwarding_trusted, request_headers
from app.loadtest.verdict import Budgets, Row, Trail, judge

RUN = "abc123"
BUDGETS = Budgets(
    client_failures=5,
    client_window=900,
    pin_max_failures=5,
    account_max_failures=20,
    account_window=3600,
    ussd_session_max_failures=3,
)


def row(
    n,
    *,
    at=None,
    success=False,
    reason="invalid_credentials",
    method="password",
    client="198.18.0.1",
    phone="+250789000001",
    agent="ladys-essence-loadtest/brute-force/attack",
    channel="http",
    session="",
    generator="",
):
    request_id = f"lt-{RUN}-{generator}.{n}" if generator else f"lt-{RUN}-{n}"
    return Row(
        request_id, float(n if at is None else at), success, reason, method, client, phone, agent, channel, session
    )


def verdict(rows, **trail):
    return judge(RUN, Trail(rows, **trail), BUDGETS)


def test_a_client_verified_one_failure_more_than_its_budget_fails():
    assert verdict([row(n) for n in range(1, 6)]).word == "PASS"
    failed = verdict([row(n) for n in range(1, 7)])
    assert failed.word == "FAIL" and failed.exit_status == 1
    assert any("worst of 1 clients verified 6 failures" in line for line in failed.lines)


def test_refusals_do_not_spend_a_budget_and_failures_outside_the_window_do_not_count():
    refused = [row(n, reason="rate_limited") for n in range(6, 50)]
    assert verdict([row(n) for n in range(1, 6)] + refused).word == "PASS"
    spread = [row(n, at=n * 1000) for n in range(1, 11)]  # ten failures, one per 1000 s
    assert verdict(spread, expected=10).word == "PASS"


def test_a_missing_or_doubled_audit_row_fails():
    rows = [row(n, reason="rate_limited") for n in (1, 2, 4)]
    assert "missing 1" in verdict(rows).lines[0] and verdict(rows).word == "FAIL"
    doubled = [row(n, reason="rate_limited") for n in (1, 2, 2, 3)]
    assert verdict(doubled).word == "FAIL"
    whole = [row(n, reason="rate_limited") for n in (1, 2, 3)]
    assert verdict(whole, expected=3).word == "PASS"
    assert verdict(whole, expected=4).word == "FAIL"  # the fourth request never became a row
    # ... unless the driver cut it off at the end, when nobody knows whether it was sent
    assert verdict(whole, expected=4, uncertain={f"lt-{RUN}-4"}).word == "PASS"


def test_generators_number_their_own_requests():
    rows = [row(n, reason="rate_limited", generator=g) for g in ("aa", "bb") for n in (1, 2, 3)]
    assert verdict(rows).word == "PASS"
    assert verdict(rows[:-2] + rows[-1:]).word == "FAIL"  # bb's 2 is missing


def test_a_refused_real_user_fails_and_is_named():
    legit = "ladys-essence-loadtest/mixed/legit"
    rows = [
        row(1, success=True, reason="ok", agent=legit),
        row(2, reason="rate_limited", agent=legit, phone="+250789000003", client="198.18.0.10"),
    ]
    failed = verdict(rows)
    assert failed.word == "FAIL"
    named = [line for line in failed.lines if "+250789000003" in line]
    assert named and "rate_limited" in named[0] and "198.18.0.10" in named[0]


def test_ussd_session_tries_and_the_pin_lock_hold():
    phones = [f"+25078900{n:04d}" for n in range(4)]
    ussd = dict(method="pin", channel="ussd", client="127.0.0.1", reason="unknown_account")
    session = [row(n + 1, phone=phones[n], session="atk-1", **ussd) for n in range(4)]
    assert verdict(session[:3]).word == "PASS"
    assert verdict(session).word == "FAIL"  # a 4th PIN verified in one session
    one_number = [row(n + 1, phone=phones[0], session=f"atk-{n}", **ussd) for n in range(6)]
    assert verdict(one_number[:5]).word == "PASS"
    assert verdict(one_number).word == "FAIL"  # six wrong PINs on one number, over many sessions


def test_no_rows_is_incomplete_not_pass():
    empty = verdict([])
    assert (empty.word, empty.exit_status) == ("INCOMPLETE", 2)
    assert verdict([], client_ok=False).word == "FAIL"


def test_request_ids_carry_the_run_and_the_generator():
    single, named = Generator(RUN, "spray"), Generator(RUN, "spray", name="w1")
    attack = Planned("/api/auth/login", {}, "attack", "login attack", address="198.18.0.9")
    setup = Planned("/api/auth/register", {}, "setup", "register", audited=False)
    assert request_headers(single, attack)["X-Request-ID"] == f"lt-{RUN}-1"
    assert request_headers(single, setup)["X-Request-ID"] == f"lt-{RUN}-s1"
    assert request_headers(single, attack)["X-Request-ID"] == f"lt-{RUN}-2"
    assert request_headers(named, attack)["X-Request-ID"] == f"lt-{RUN}-w1.1"
    assert request_headers(named, attack)["X-Forwarded-For"] == "198.18.0.9"


def test_the_forwarding_probe_tells_a_trusting_server_from_one_that_is_not():
    assert forwarding_trusted([(401, '"login";r=4;t=900'), (401, '"login";r=4;t=900')])
    assert not forwarding_trusted([(401, '"login";r=4;t=900'), (401, '"login";r=3;t=900')])
    # Untrusted and this machine's budget already spent: both refused with r=0 (the old probe said "yes").
    assert not forwarding_trusted([(429, '"login";r=0;t=60'), (429, '"login";r=0;t=60')])


def sms(n, *, phone="+250789000001", client="198.18.0.1", reason="code_sent", at=None):
    return row(
        n,
        at=at,
        success=reason == "code_sent",
        reason=reason,
        method="",
        client=client,
        phone=phone,
        agent="ladys-essence-loadtest/sms-pumping/attack",
        channel="sms",
    )


def test_sms_sent_past_a_numbers_hourly_budget_fails_and_refusals_do_not_count():
    clients = [f"198.18.1.{i}" for i in range(1, 20)]
    within = [sms(n, client=clients[n]) for n in range(1, 4)] + [
        sms(n, client=clients[n], reason="rate_limited") for n in range(4, 10)
    ]
    passed = verdict(within)
    assert passed.word == "PASS" and "SMS: 3 sent for 9 requests" in passed.render()
    assert verdict([sms(n, client=clients[n]) for n in range(1, 5)]).word == "FAIL"  # a fourth in the hour
    spaced = [sms(n, client=clients[n], at=n * 3700) for n in range(1, 5)]  # one an hour: the day allows 5
    assert verdict(spaced).word == "PASS"


def test_sms_sent_past_a_prefix_or_a_clients_budget_fails():
    sweep = [sms(n, phone=f"+250789000{n:03d}", client=f"198.18.2.{n}") for n in range(1, 32)]
    assert verdict(sweep[:30]).word == "PASS"
    assert verdict(sweep).word == "FAIL"  # 31 numbers of one prefix in an hour
    one_client = [sms(n, phone=f"+25078900{n:02d}000") for n in range(1, 12)]
    assert verdict(one_client[:10]).word == "PASS"
    assert verdict(one_client).word == "FAIL"  # 11 messages for one address
