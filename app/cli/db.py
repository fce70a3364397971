"""``ladys-essence db``: apply, undo and check the migrations."""

from __future__ import annotations

import click

from app.core.cli import load_settings


@click.group(help="Database schema: upgrade, downgrade, check.")
def db() -> None:
    pass


@db.command(help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    from app.core.embedded import servers_for
    from app.db import migrations

    with servers_for(load_settings(), redis=False) as settings:
        migrations.upgrade(settings, revision)
    click.echo(f"database upgraded to {revision}")


@db.command(help="Undo migrations down to REVISION (default: one step); says first what it deletes.")
@click.argument("revision", default="-1")
@click.option(
    "--i-understand-this-deletes-data",
    "deletes_data_ok",
    is_flag=True,
    help="Required with APP_ENV=production: the tables and columns listed are dropped with their rows.",
)
def downgrade(revision: str, deletes_data_ok: bool) -> None:
    from app.core.embedded import servers_for
    from app.db import migrations
    from app.db.downgrade_plan import plan_downgrade

    loaded = load_settings()
    with servers_for(loaded, redis=False) as settings:
        plan = plan_downgrade(settings, revision)
        for line in plan.describe():
            click.echo(f"downgrade to {revision} {line}", err=True)
        if settings.app_env == "production" and not deletes_data_ok:
            lost = "it deletes the data above" if plan.loses_data else "a downgrade can delete data"
            raise click.ClickException(
                f"refusing to downgrade a production database: {lost}. Back it up, then pass "
                "--i-understand-this-deletes-data"
            )
        migrations.downgrade(settings, revision)
    click.echo(f"database downgraded to {revision}")


@db.command(help="Fail unless there is one head, the database is at it, and models match migrations.")
def check() -> None:
    from app.core.embedded import servers_for
    from app.db import migrations

    with servers_for(load_settings(), redis=False) as settings:
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
