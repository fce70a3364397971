"""``ladys-essence legacy import``: the Flask-era accounts and login history into this service.

docs/legacy-import.md walks an operator through it (dry run, report, resolve, import, verify).
Exit status: 0 done, 1 a batch failed (the report names its source ids; run again to resume),
2 usage errors (a bad option or --resolve file).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from app.core.settings import ConfigError, Settings


@click.group(help="The Flask-era data: import its accounts and login history.")
def legacy() -> None:
    pass


def _staff_roles(values: tuple[str, ...]) -> dict[str, str]:
    """USER_TYPE -> the authority granted (support, security, admin); ``support`` is the panel's type only."""
    from app.db.models import STAFF_USER_TYPES
    from app.legacy.rules import PANEL_USER_TYPE, STAFF_GRANTS

    roles: dict[str, str] = {}
    for value in values:
        user_type, sep, role = value.partition("=")
        if not sep or user_type not in STAFF_USER_TYPES or role not in STAFF_GRANTS:
            raise click.BadParameter(
                f"{value!r}: write USER_TYPE=ROLE, USER_TYPE one of {', '.join(STAFF_USER_TYPES)},"
                f" ROLE one of {', '.join(STAFF_GRANTS)} (e.g. admin=admin)",
                param_hint="--staff-role",
            )
        if role == "support" and user_type != PANEL_USER_TYPE:
            raise click.BadParameter(
                f"{value!r}: support is the admin panel's authority, which only user_type {PANEL_USER_TYPE} has;"
                f" leave {user_type} out (no authority) or grant security or admin",
                param_hint="--staff-role",
            )
        roles[user_type] = role
    return roles


def _resolutions(path: Path | None) -> dict[int, Any]:
    """The operator's decisions: a JSON object, source account id -> keep | unlink | skip."""
    from app.legacy.collisions import RESOLUTIONS

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--resolve") from exc
    if isinstance(data, dict) and isinstance(data.get("resolve_template"), dict):
        data = data["resolve_template"]  # a report given as it is: its suggestions
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a JSON object of id -> keep|unlink|skip", param_hint="--resolve")
    out: dict[int, Any] = {}
    for key, decision in data.items():
        if not str(key).isdigit() or decision not in RESOLUTIONS:
            raise click.BadParameter(
                f"{path}: {key!r}: {decision!r} (expected an account id and one of {', '.join(RESOLUTIONS)})",
                param_hint="--resolve",
            )
        out[int(key)] = decision
    return out


class _Progress:
    """A progress bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._bar: Any = None
        self._phase = ""
        self._shown = 0
        self._last_line = 0.0
        self._started = time.monotonic()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self.close()
            self._phase, self._shown, self._started = phase, 0, time.monotonic()
            if self._tty:
                self._bar = click.progressbar(
                    length=max(total, 1), label=phase, show_eta=True, show_pos=True, file=sys.stderr
                )
                self._bar.__enter__()
        if self._bar is not None:
            self._bar.update(done - self._shown)
            self._shown = done
            return
        now = time.monotonic()
        if now - self._last_line >= 2.0 or done >= total:
            self._last_line = now
            rate = done / max(now - self._started, 1e-6)
            left = (total - done) / rate if rate else 0.0
            click.echo(f"{phase}: {done:,}/{total:,} rows, {rate:,.0f} rows/s, about {left:,.0f} s left", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@legacy.command("import", help="Import the Flask-era users and login history (the source is only read).")
@click.option("--from", "source_url", required=True, help="The Flask-era database, postgresql://...")
@click.option("--dry-run", is_flag=True, help="Do every check and write only the report.")
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here."
)
@click.option("--only", type=click.Choice(["users", "attempts"]), help="Import only the accounts or only the history.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option(
    "--on-collision",
    type=click.Choice(["report", "keep-latest-activity"]),
    default="report",
    show_default=True,
    help="Accounts sharing a phone number: import none, or the most recently active one (the others without a phone).",
)
@click.option(
    "--resolve",
    "resolve_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON: source account id -> keep | unlink | skip, for the collisions it names.",
)
@click.option(
    "--staff-role",
    multiple=True,
    help="USER_TYPE=ROLE (support, security or admin), e.g. admin=support. Without it nothing is granted: "
    "user_type admin rows are not imported, other staff types get no authority. Granted accounts come "
    "without their Flask-era password and PIN (set one with `users recover`).",
)
def import_command(
    source_url: str,
    dry_run: bool,
    report_path: Path | None,
    only: str | None,
    batch_size: int,
    on_collision: str,
    resolve_path: Path | None,
    staff_role: tuple[str, ...],
) -> None:
    from app.core.embedded import servers_for
    from app.legacy.importer import ImportFailed, ImportOptions, run_import
    from app.legacy.source import SourceError

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    options = ImportOptions(
        source_url=source_url,
        region=settings.default_phone_region,
        dry_run=dry_run,
        only=only,  # type: ignore[arg-type]
        batch_size=batch_size,
        policy=on_collision,  # type: ignore[arg-type]
        resolutions=_resolutions(resolve_path),
        staff_roles=_staff_roles(staff_role),
        argon2_memory_kib=settings.argon2_memory_kib,
        argon2_time_cost=settings.argon2_time_cost,
    )
    progress = _Progress()
    failed: ImportFailed | None = None
    with servers_for(settings, redis=False) as resolved:
        assert resolved.database_url
        try:
            report = asyncio.run(run_import(resolved.database_url, options, progress))
        except SourceError as exc:
            raise click.ClickException(str(exc)) from exc
        except ImportFailed as exc:
            failed = exc
            assert exc.report is not None
            report = exc.report
        finally:
            progress.close()
    if report_path is not None:
        report_path.write_bytes(report.to_json())
    click.echo(report.summary())
    if report_path is not None:
        click.echo(f"report: {report_path}")
    if failed is not None:
        raise click.ClickException(f"{failed} (run the same command again to resume)")
