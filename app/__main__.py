"""Console entry point ``ladys-essence`` (also ``python -m app``): one module of app/cli per command group."""

from __future__ import annotations

import logging
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


@click.group(help="Lady's Essence Auth: the authentication service of the Lady's Essence platform.")
def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for _command in (serve, db, audit, users, accounts, keys, services, legacy, loadtest):
    main.add_command(_command)
main.add_command(sessions)


if __name__ == "__main__":
    sys.exit(main())
