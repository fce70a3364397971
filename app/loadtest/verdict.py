"""Judge a run from the audit trail, whatever sent its traffic.

Every audited request of a run carries ``X-Request-ID: lt-<run>-[<generator>.]<n>`` (see
``scenarios.py``) and is one ``login_attempts`` row, stamped by the server. So the rows alone say
which credentials were verified (a success or a verified failure, never a refusal), for which
client, number and USSD session, and when; which real users (``User-Agent: .../legit``) were
refused; and, from the numbers, whether a request is missing or was written twice.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from app.core.postgres import plain_dsn

# Exit statuses of `ladys-essence loadtest` and `loadtest verdict` (README: Load-testing the limits).
EXIT_PASS, EXIT_FAIL, EXIT_INCOMPLETE = 0, 1, 2

# The credential was checked and was wrong: these spend budgets. Refusals (rate_limited, pin_locked,
# session_locked, ...) and "busy" (never verified) do not.
VERIFIED_FAILURES = ("invalid_credentials", "unknown_account", "pin_not_enabled", "account_inactive")
SETUP_REASONS = ("registered", "phone_number_taken")
SMS_BUDGETS = (
    "sms_per_number_per_hour",
    "sms_per_number_per_day",
    "sms_per_client_per_hour",
    "sms_per_prefix_per_hour",
    "sms_daily_budget",
)


@dataclass
class Budgets:
    """The limits the target is meant to enforce; by default this machine's settings (the same variables)."""

    client_failures: int = 5
    client_window: float = 900.0
    pin_max_failures: int = 5
    account_max_failures: int = 20
    account_window: float = 3600.0
    ussd_session_max_failures: int = 3
    sms_per_number_per_hour: int = 3
    sms_per_number_per_day: int = 5
    sms_per_client_per_hour: int = 10
    sms_per_prefix_per_hour: int = 30
    sms_daily_budget: int = 2000

    @classmethod
    def from_env(cls, environ: Any = None, **overrides: Any) -> Budgets:
        from app.core.settings import Settings

        environ = os.environ if environ is None else environ
        defaults = dict(zip(Settings.__struct_fields__, Settings.__struct_defaults__, strict=False))
        names = {
            "client_failures": "rate_limit_login_failures",
            "client_window": "rate_limit_login_window_seconds",
            "pin_max_failures": "pin_max_failures",
            "account_max_failures": "account_max_failures",
            "account_window": "account_window_seconds",
            "ussd_session_max_failures": "ussd_session_max_failures",
            **{name: name for name in SMS_BUDGETS},
        }
        values: dict[str, Any] = {}
        for ours, setting in names.items():
            kind = float if ours.endswith("window") else int
            values[ours] = kind(environ.get(setting.upper(), defaults[setting]))
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


@dataclass
class Verdict:
    lines: list[str]
    ok: bool
    complete: bool = True  # False: the audit trail could not be checked
    why: str = ""

    @property
    def word(self) -> str:
        if not self.ok:
            return "FAIL"
        return "PASS" if self.complete else "INCOMPLETE"

    @property
    def exit_status(self) -> int:
        if not self.ok:
            return EXIT_FAIL
        return EXIT_PASS if self.complete else EXIT_INCOMPLETE

    def render(self) -> str:
        body = "".join(f"  {line}\n" for line in self.lines)
        if not self.ok:
            summary = "a limit did not hold, a real user was refused, or requests are missing from the audit trail"
        elif self.complete:
            summary = "every limit held exactly and every request is one audit row"
        else:
            summary = self.why or "the audit trail was not checked"
        return f"{body}verdict: {self.word} - {summary}\n"


def incomplete(why: str, lines: list[str] | None = None, ok: bool = True) -> Verdict:
    """Not judged (``ok`` False still fails it: what the generator saw was already wrong)."""
    return Verdict([*(lines or []), why], ok=ok, complete=False, why=why)


@dataclass
class Row:
    request_id: str
    created_at: float
    success: bool
    reason: str
    method: str
    client: str
    phone: str
    user_agent: str
    channel: str
    session: str


@dataclass
class Trail:
    """A run's audit rows and how many audited requests its generators say they sent (when known)."""

    rows: list[Row]
    expected: int | None = None
    client_lines: list[str] = field(default_factory=list)  # what the generator saw and the trail cannot
    client_ok: bool = True
    uncertain: set[str] = field(default_factory=set)  # cut off at the end: sent or not, nobody knows


def _max_in_window(times: list[float], window: float) -> int:
    """The most events inside any interval of ``window`` seconds (two pointers over sorted times).

    A slack of up to a second keeps the gap between the limiter's clock and the audit event's stamp
    from reading as a violation at the window's edge.
    """
    window -= min(1.0, window * 0.1)
    times = sorted(times)
    best = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _numbering(run_id: str, request_ids: list[str], uncertain: set[str]) -> tuple[int, int, list[str]]:
    """(duplicates, missing, generators): each generator's numbers should be exactly 1..its highest."""
    pattern = re.compile(rf"^lt-{re.escape(run_id)}-(?:(\w+)\.)?(\d+)$")
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for request_id in request_ids:
        match = pattern.match(request_id)
        if match:
            seen[match.group(1) or ""][int(match.group(2))] += 1
    duplicates = sum(count - 1 for numbers in seen.values() for count in numbers.values() if count > 1)
    missing = 0
    for name, numbers in seen.items():
        prefix = f"lt-{run_id}-{name}." if name else f"lt-{run_id}-"
        absent = set(range(1, max(numbers) + 1)) - set(numbers)
        missing += sum(f"{prefix}{number}" not in uncertain for number in absent)
    return duplicates, missing, sorted(seen)


def judge(run_id: str, trail: Trail, budgets: Budgets) -> Verdict:
    """Did every limit hold exactly, were real users let in, and is every request one audit row?"""
    rows = trail.rows
    lines = list(trail.client_lines)
    ok = trail.client_ok
    if not rows:
        why = f"no audit rows for run {run_id} (another database, --since too late, or none arrived)"
        return incomplete(why, lines, trail.client_ok)
    duplicates, missing, generators = _numbering(run_id, [row.request_id for row in rows], trail.uncertain)
    ok &= duplicates == 0 and missing == 0
    lines.append(
        f"audit: {len(rows)} rows from {len(generators)} generator(s); missing {missing}, written twice {duplicates}"
    )
    if trail.expected is not None:
        ok &= trail.expected - len(trail.uncertain) <= len(rows) <= trail.expected
        cut = f" ({len(trail.uncertain)} cut off at the end)" if trail.uncertain else ""
        lines.append(f"audit: {len(rows)} rows for {trail.expected} audited requests sent{cut}")
    attempts = [row for row in rows if row.reason not in SETUP_REASONS]
    verified_failures = [row for row in attempts if not row.success and row.reason in VERIFIED_FAILURES]

    by_client: dict[str, list[float]] = defaultdict(list)
    for row in verified_failures:
        if row.channel == "http":
            by_client[row.client].append(row.created_at)
    if by_client:
        worst = max(_max_in_window(times, budgets.client_window) for times in by_client.values())
        ok &= worst <= budgets.client_failures
        lines.append(
            f"per-client budget {budgets.client_failures}/{budgets.client_window:.0f}s: "
            f"worst of {len(by_client)} clients verified {worst} failures"
        )
    by_session: Counter[str] = Counter(row.session for row in verified_failures if row.channel == "ussd")
    if by_session:
        worst = max(by_session.values())
        ok &= worst <= budgets.ussd_session_max_failures
        lines.append(f"USSD session tries {budgets.ussd_session_max_failures}: worst session had {worst} PINs verified")

    pin_streak: Counter[str] = Counter()
    worst_pin = 0
    for row in sorted(attempts, key=lambda row: row.created_at):
        if row.success:
            pin_streak[row.phone] = 0
        elif row.method == "pin" and row.reason in VERIFIED_FAILURES:
            pin_streak[row.phone] += 1
            worst_pin = max(worst_pin, pin_streak[row.phone])
    if worst_pin:
        ok &= worst_pin <= budgets.pin_max_failures
        lines.append(f"PIN lock {budgets.pin_max_failures}: worst number had {worst_pin} wrong PINs verified in a row")
    by_number: dict[str, list[float]] = defaultdict(list)
    for row in verified_failures:
        if row.method == "password":
            by_number[row.phone].append(row.created_at)
    if by_number:
        worst = max(_max_in_window(times, budgets.account_window) for times in by_number.values())
        ok &= worst <= budgets.account_max_failures
        lines.append(
            f"per-number password budget {budgets.account_max_failures}/{budgets.account_window:.0f}s: "
            f"worst number {worst}"
        )

    ok &= _sms_budgets_held(rows, budgets, lines)

    legit = [row for row in attempts if row.user_agent.endswith("/legit")]
    if legit:
        refused = [row for row in legit if not row.success]
        ok &= not refused
        lines.append(f"real users: {len(legit) - len(refused)}/{len(legit)} signed in")
        for row in refused[:10]:
            lines.append(f"  refused real user {row.phone} (client {row.client or row.session}): {row.reason}")
    return Verdict(lines, ok)


def _sms_budgets_held(rows: list[Row], budgets: Budgets, lines: list[str]) -> bool:
    """The SMS sent (``code_sent`` rows of channel ``sms``) within every budget of ``recovery/start``."""
    requests = [row for row in rows if row.channel == "sms"]
    if not requests:
        return True
    sent = [row for row in requests if row.reason == "code_sent"]
    checks = (
        ("per number", lambda row: row.phone, 3600.0, budgets.sms_per_number_per_hour),
        ("per number a day", lambda row: row.phone, 86400.0, budgets.sms_per_number_per_day),
        ("per client", lambda row: row.client, 3600.0, budgets.sms_per_client_per_hour),
        ("per prefix", lambda row: row.phone[:-3], 3600.0, budgets.sms_per_prefix_per_hour),
        ("in all", lambda row: "", 86400.0, budgets.sms_daily_budget),
    )
    ok = True
    worst_lines = []
    for label, key, window, limit in checks:
        groups: dict[str, list[float]] = defaultdict(list)
        for row in sent:
            groups[key(row)].append(row.created_at)
        worst = max((_max_in_window(times, window) for times in groups.values()), default=0)
        ok &= worst <= limit
        worst_lines.append(f"{label} {worst}/{limit}")
    lines.append(f"SMS: {len(sent)} sent for {len(requests)} requests; worst {', '.join(worst_lines)}")
    return ok


async def read_trail(
    database_url: str,
    run_id: str,
    since: datetime.datetime,
    *,
    expected: int | None = None,
    settle_seconds: float = 30.0,
    quiet_seconds: float = 2.0,
) -> list[Row]:
    """The run's rows, once the audit writer has caught up.

    With ``expected``: until that many rows are in (or the settle time is over). Without: until
    the count has not moved for ``quiet_seconds``.
    """
    import asyncpg

    conn = await asyncpg.connect(plain_dsn(database_url), timeout=10)
    try:
        pattern = f"lt-{run_id}-%"
        deadline = time.monotonic() + settle_seconds
        last, last_change = -1, time.monotonic()
        while True:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM login_attempts WHERE request_id LIKE $1 AND created_at >= $2", pattern, since
            )
            now = time.monotonic()
            if count != last:
                last, last_change = count, now
            done = count >= expected if expected is not None else (count and now - last_change >= quiet_seconds)
            if done or now > deadline:
                break
            await asyncio.sleep(0.5)
        records = await conn.fetch(
            "SELECT request_id, extract(epoch FROM created_at)::float8 AS at, success, reason,"
            " coalesce(auth_method, '') AS method, coalesce(host(ip_address), '') AS client, phone_number,"
            " coalesce(user_agent, '') AS user_agent, channel, coalesce(session_id, '') AS session"
            " FROM login_attempts WHERE request_id LIKE $1 AND created_at >= $2",
            pattern,
            since,
        )
    finally:
        await conn.close()
    return [
        Row(
            r["request_id"],
            r["at"],
            r["success"],
            r["reason"],
            r["method"],
            r["client"],
            r["phone_number"],
            r["user_agent"],
            r["channel"],
            r["session"],
        )
        for r in records
    ]


def verdict_of_run(
    database_url: str | None,
    run_id: str,
    *,
    since: datetime.datetime,
    budgets: Budgets,
    expected: int | None = None,
    settle_seconds: float = 30.0,
    client_lines: list[str] | None = None,
    client_ok: bool = True,
    uncertain: set[str] | None = None,
    scenario: str | None = None,
) -> Verdict:
    """The whole verdict, from a synchronous caller (the CLI, the built-in driver after its loop)."""
    if not database_url:
        why = "the audit trail was not checked (no database to read it from: --database-url)"
        return incomplete(why, client_lines, client_ok)
    import asyncpg

    try:
        rows = asyncio.run(read_trail(database_url, run_id, since, expected=expected, settle_seconds=settle_seconds))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return incomplete(f"the audit trail could not be read: {exc}", client_lines, client_ok)
    if scenario:
        rows = [row for row in rows if f"/{scenario}/" in row.user_agent]
    trail = Trail(rows, expected, client_lines or [], client_ok, uncertain or set())
    return judge(run_id, trail, budgets)
