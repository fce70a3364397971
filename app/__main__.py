"""Console entry point ``ladys-essence`` (also ``python -m app``): one module of app/cli per command group."""

from __future__ import annotations

import os
import sys

import click

from app.cli.accounts import accounts
from app.cli.audit import audit
from app.cli.db import db
from app.cli.keys import keys
from app.cli.legacy import legacy
from app.cli.loadtest import loadtest
from app.cli.serve import serve
from app.cli.services import services
from app.cli.sessions import sessions
from app.cli.users import users
from app.cli.webhooks import webhooks
from app.core.logs import configure_logging


@click.group(help="Lady's Essence Auth: the authentication service of the Lady's Essence platform.")
def main() -> None:
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), "json" if os.environ.get("LOG_FORMAT") == "json" else "text")


for _command in (serve, db, audit, users, accounts, keys, services, legacy, loadtest):
    main.add_command(_command)
main.add_command(sessions)
main.add_command(webhooks)


if __name__ == "__main__":
    sys.exit(main())
