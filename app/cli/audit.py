"""``ladys-essence audit``: the writer on its own, and the security team's history commands."""

from __future__ import annotations

import click

from app.audit.history.commands import AUDIT_COMMANDS
from app.audit.history.partition_commands import partitions
from app.core.cli import load_settings


@click.group(help="The login-attempt audit trail.")
def audit() -> None:
    pass


@audit.command(help="Run the audit writer on its own (Redis streams -> Postgres); SIGTERM drains and exits.")
@click.option("--consumer", default=None, help="Consumer name in the group (default: host-pid-random).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
def worker(consumer: str | None, metrics_port: int | None) -> None:
    from app.audit.pipeline.worker import run_worker

    run_worker(load_settings(), consumer_name=consumer, metrics_port=metrics_port)


for _command in AUDIT_COMMANDS:  # query, export, prune
    audit.add_command(_command)
audit.add_command(partitions)
