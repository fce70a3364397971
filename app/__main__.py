"""Console entry point ``ladys-essence`` (also ``python -m app``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

import click

from app.audit.history.commands import AUDIT_COMMANDS
from app.cli.legacy import legacy
from app.cli.users import users
from app.core.settings import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(help="Lady's Essence Auth: the authentication service of the Lady's Essence platform.")
def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@main.command(help="Serve the API (embedded Postgres and Redis when DATABASE_URL / REDIS_URL are unset).")
@click.option("--host", default=None, help="Address to bind (HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (PORT, default 8000).")
@click.option("--workers", type=int, default=None, help="uvicorn worker processes (WORKERS, default 1).")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    import uvicorn

    from app.core.embedded import servers_for
    from app.db import migrations

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the default action,
    # which would end the process before the embedded servers below are stopped. As an exception
    # it unwinds through ``servers_for`` instead (exit status 143; with --workers > 1 uvicorn's
    # supervisor handles the signal itself and returns normally).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with servers_for(settings) as resolved:
        migrations.upgrade(resolved)
        # Workers are separate processes: hand them the resolved URLs and development secrets.
        os.environ.update(
            DATABASE_URL=resolved.database_url or "",
            REDIS_URL=resolved.redis_url or "",
            JWT_SECRET=resolved.jwt_secret or "",
            PIN_PEPPER=resolved.pin_pepper or "",
            WORKERS=str(workers),
        )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        click.echo(f"Lady's Essence Auth on http://{shown}:{port}  (API docs: http://{shown}:{port}/schema)")
        uvicorn.run(
            "app.asgi:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            proxy_headers=False,
            server_header=False,
        )


@main.group(help="Database schema: upgrade, downgrade, check.")
def db() -> None:
    pass


@db.command(help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    from app.core.embedded import servers_for
    from app.db import migrations

    with servers_for(_settings(), redis=False) as settings:
        migrations.upgrade(settings, revision)
    click.echo(f"database upgraded to {revision}")


@db.command(help="Undo migrations down to REVISION (default: one step).")
@click.argument("revision", default="-1")
def downgrade(revision: str) -> None:
    from app.core.embedded import servers_for
    from app.db import migrations

    with servers_for(_settings(), redis=False) as settings:
        migrations.downgrade(settings, revision)
    click.echo(f"database downgraded to {revision}")


@db.command(help="Fail unless there is one head, the database is at it, and models match migrations.")
def check() -> None:
    from app.core.embedded import servers_for
    from app.db import migrations

    with servers_for(_settings(), redis=False) as settings:
        result = migrations.check(settings)
    click.echo(f"heads: {', '.join(result.heads) or 'none'}")
    if len(result.heads) != 1:
        raise click.ClickException(f"expected exactly one migration head, found {len(result.heads)}: {result.heads}")
    if result.differences:
        for diff in result.differences:
            click.echo(f"  differs: {diff}", err=True)
        raise click.ClickException("models and migrations disagree")
    click.echo("models match migrations")
    if result.database_current:
        click.echo(f"database at head ({result.heads[0]})")
    else:
        current = ", ".join(result.current) or "empty"
        click.echo(f"database at {current}: run `ladys-essence db upgrade` to reach {result.heads[0]}")


@main.group(help="The login-attempt audit trail.")
def audit() -> None:
    pass


@audit.command(help="Run the audit writer on its own (Redis streams -> Postgres); SIGTERM drains and exits.")
@click.option("--consumer", default=None, help="Consumer name in the group (default: host-pid-random).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
def worker(consumer: str | None, metrics_port: int | None) -> None:
    from app.audit.pipeline.worker import run_worker

    run_worker(_settings(), consumer_name=consumer, metrics_port=metrics_port)


@main.command(help="Attack a running server (127.0.0.1 unless --allow-remote) and say whether its limits held.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--scenario", type=click.Choice(["brute-force", "spray", "stuffing", "mixed"]), default="brute-force")
@click.option("--duration", type=float, default=30, show_default=True, help="Seconds of load.")
@click.option("--concurrency", type=int, default=64, show_default=True)
@click.option("--max-requests", type=int, default=100_000, show_default=True)
@click.option("--database-url", default=None, help="Count this run's audit rows (default: DATABASE_URL or .data).")
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not this machine.")
@click.option("--pin-max-failures", type=int, default=5, show_default=True)
@click.option("--account-max-failures", type=int, default=20, show_default=True)
def loadtest(**options: object) -> None:
    from app.loadtest.runner import LoadTestError, default_database_url, run_loadtest

    data_dir = Settings.__struct_defaults__[Settings.__struct_fields__.index("data_dir")]
    database_url = options.pop("database_url") or default_database_url(os.environ.get("DATA_DIR") or data_dir)
    try:
        code = run_loadtest(database_url=database_url, **options)  # type: ignore[arg-type]
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


for _command in AUDIT_COMMANDS:  # query, export, prune
    audit.add_command(_command)
main.add_command(users)
main.add_command(legacy)


if __name__ == "__main__":
    sys.exit(main())
