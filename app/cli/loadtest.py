"""``ladys-essence loadtest``: attack a running server and say whether its limits held.

Exit status: 0 PASS, 1 FAIL (a limit did not hold, a real user was refused, audit rows missing),
2 INCOMPLETE (the limits held but the audit trail could not be checked).
"""

from __future__ import annotations

import os
import sys

import click

from app.core.settings import Settings
from app.loadtest import SCENARIOS


@click.command(help="Attack a running server (127.0.0.1 unless --allow-remote) and say whether its limits held.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--scenario", type=click.Choice(SCENARIOS), default="brute-force")
@click.option("--duration", type=float, default=30, show_default=True, help="Seconds of load.")
@click.option("--concurrency", type=int, default=64, show_default=True)
@click.option("--max-requests", type=int, default=100_000, show_default=True)
@click.option("--database-url", default=None, help="Count this run's audit rows (default: DATABASE_URL or .data).")
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not this machine.")
@click.option("--pin-max-failures", type=int, default=5, show_default=True)
@click.option("--account-max-failures", type=int, default=20, show_default=True)
@click.option("--verbose", is_flag=True, help="Log every request (httpx INFO lines).")
@click.option(
    "--ussd-token",
    default=None,
    envvar="LOADTEST_USSD_TOKEN",
    help="ussd scenario: the gateway credential (default: one is made in the target's database).",
)
def loadtest(**options: object) -> None:
    from app.loadtest.runner import LoadTestError, default_database_url, run_loadtest

    data_dir = Settings.__struct_defaults__[Settings.__struct_fields__.index("data_dir")]
    database_url = options.pop("database_url") or default_database_url(os.environ.get("DATA_DIR") or data_dir)
    try:
        code = run_loadtest(database_url=database_url, **options)  # type: ignore[arg-type]
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)
