"""``ladys-essence loadtest``: attack a running server and say whether its limits held.

``loadtest --scenario S`` runs the built-in driver; ``loadtest verdict --run ID`` judges any run
(the built-in driver's or Locust's) from the audit trail; ``loadtest locust`` prints how to start
the shipped locustfile on one or many machines. Exit status: 0 PASS, 1 FAIL (a limit did not hold,
a real user was refused, a request missing from the audit trail), 2 INCOMPLETE (not judged: the
target did not answer, or the audit trail could not be read).
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from app.core.settings import Settings
from app.loadtest import SCENARIOS


def _database_url(given: str | None) -> str | None:
    from app.loadtest.runner import default_database_url

    data_dir = Settings.__struct_defaults__[Settings.__struct_fields__.index("data_dir")]
    return given or default_database_url(os.environ.get("DATA_DIR") or data_dir)


def _since(value: str) -> datetime.datetime:
    """An ISO-8601 time, or an age such as 90m, 2h, 1d."""
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither an ISO-8601 time nor an age like 2h") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def budget_options(function: Any) -> Any:
    """The limits a verdict holds the target to; defaults: this machine's settings (same variables)."""
    options = [
        click.option("--client-failures", type=int, help="Failures per client and window (RATE_LIMIT_LOGIN_FAILURES)."),
        click.option("--client-window", type=float, help="Seconds (RATE_LIMIT_LOGIN_WINDOW_SECONDS)."),
        click.option("--pin-max-failures", type=int, help="Wrong PINs before a number locks (PIN_MAX_FAILURES)."),
        click.option("--account-max-failures", type=int, help="Wrong passwords per number (ACCOUNT_MAX_FAILURES)."),
        click.option("--account-window", type=float, help="Seconds (ACCOUNT_WINDOW_SECONDS)."),
        click.option("--ussd-session-max-failures", type=int, help="PIN tries per USSD session."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _budgets(options: dict[str, Any]) -> Any:
    from app.loadtest.verdict import Budgets

    names = (
        "client_failures",
        "client_window",
        "pin_max_failures",
        "account_max_failures",
        "account_window",
        "ussd_session_max_failures",
    )
    return Budgets.from_env(**{name: options.pop(name) for name in names})


@click.group(
    invoke_without_command=True,
    help="Attack a running server (127.0.0.1 unless --allow-remote) and say whether its limits held.",
)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--scenario", type=click.Choice(SCENARIOS), default="brute-force")
@click.option("--duration", type=float, default=30, show_default=True, help="Seconds of load.")
@click.option("--concurrency", type=int, default=32, show_default=True, help="Workers, one connection each.")
@click.option("--max-requests", type=int, default=100_000, show_default=True)
@click.option("--request-timeout", type=float, default=10, show_default=True, help="Seconds for one request.")
@click.option(
    "--settle",
    "settle_seconds",
    type=float,
    default=30,
    show_default=True,
    help="Seconds to wait for the audit writer to catch up.",
)
@click.option("--database-url", default=None, help="Read the audit trail here (default: DATABASE_URL or .data).")
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not this machine.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a PNG of answers and latency over the run into this directory.",
)
@click.option("--verbose", is_flag=True, help="Log every request (httpx INFO lines).")
@click.option(
    "--ussd-token",
    default=None,
    envvar="LOADTEST_USSD_TOKEN",
    help="ussd scenario: the gateway credential (default: one is made in the target's database).",
)
@budget_options
@click.pass_context
def loadtest(context: click.Context, /, **options: Any) -> None:
    if context.invoked_subcommand is not None:
        return
    from app.loadtest.runner import LoadTestError, run_loadtest

    budgets = _budgets(options)
    database_url = _database_url(options.pop("database_url"))
    try:
        code = run_loadtest(database_url=database_url, budgets=budgets, **options)
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@loadtest.command(help="Judge a run from the audit trail: every limit held, real users let in, one row per request.")
@click.option("--run", "run_id", required=True, help="The run id (X-Request-ID: lt-<run>-...).")
@click.option("--scenario", type=click.Choice(SCENARIOS), default=None, help="Only this scenario's requests.")
@click.option("--since", default="1d", show_default=True, help="Rows from this time on: ISO-8601, or an age (90m, 2h).")
@click.option("--expect", type=int, default=None, help="Audited requests the generators sent, when known.")
@click.option("--settle", "settle_seconds", type=float, default=30, show_default=True)
@click.option("--database-url", default=None, help="The target's database (default: DATABASE_URL or .data).")
@budget_options
def verdict(
    run_id: str,
    scenario: str | None,
    since: str,
    expect: int | None,
    settle_seconds: float,
    database_url: str | None,
    **options: Any,
) -> None:
    from app.loadtest.verdict import verdict_of_run

    if not re.fullmatch(r"\w+", run_id):
        raise click.BadParameter("a run id is letters, digits and _", param_hint="--run")
    result = verdict_of_run(
        _database_url(database_url),
        run_id,
        since=_since(since),
        budgets=_budgets(options),
        expected=expect,
        settle_seconds=settle_seconds,
        scenario=scenario,
    )
    click.echo(f"run {run_id}" + (f" ({scenario})" if scenario else ""))
    click.echo(result.render(), nl=False)
    sys.exit(result.exit_status)


@loadtest.command(help="Print how to run the shipped locustfile, on this machine or on many.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--scenario", type=click.Choice(SCENARIOS), default="brute-force")
@click.option("--users", type=int, default=32, show_default=True)
@click.option("--duration", default="30s", show_default=True, help="Locust's --run-time.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes (0: one process).")
@click.option("--master-host", default="127.0.0.1", show_default=True, help="Where workers find the master.")
@click.option(
    "--forwarded/--not-forwarded",
    default=True,
    show_default=True,
    help="The target trusts the generators (TRUSTED_PROXIES): simulate clients by X-Forwarded-For.",
)
@click.option("--run-id", default=None, help="Default: a new one.")
def locust(
    url: str,
    scenario: str,
    users: int,
    duration: str,
    workers: int,
    master_host: str,
    forwarded: bool,
    run_id: str | None,
) -> None:
    from app.loadtest import locustfile_path

    run_id = run_id or uuid.uuid4().hex[:10]
    common = ["-f", str(locustfile_path()), "--host", url, "--scenario", scenario, "--run-id", run_id]
    if forwarded:
        common.append("--forwarded")
    head = ["locust", *common, "--headless", "-u", str(users), "-r", str(users), "-t", duration]
    quote = shlex.join
    click.echo(f"# run {run_id}: {scenario} against {url}")
    if scenario == "ussd":
        click.echo(
            "# the gateway's credential on every machine: export LOADTEST_USSD_TOKEN=$(ladys-essence services "
            "create loadtest-gateway --scope ussd)"
        )
    if workers <= 0:
        click.echo(quote(head))
    else:
        click.echo("# the master (its web UI instead: drop --headless and the -u/-r/-t options)")
        click.echo(quote([*head, "--master", "--expect-workers", str(workers)]))
        click.echo(f"# each of {workers} workers, on this machine or others:")
        click.echo(quote(["locust", *common, "--worker", "--master-host", master_host]))
    click.echo("# at the end the master runs the verdict when it can reach the database (DATABASE_URL);")
    click.echo("# otherwise, from a machine that can:")
    click.echo(quote(["ladys-essence", "loadtest", "verdict", "--run", run_id, "--scenario", scenario]))
