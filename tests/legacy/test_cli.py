"""``ladys-essence legacy import`` at a shell: the report file, the summary, bad options refused clearly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from app.__main__ import main
from app.core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, TEST_PIN_PEPPER, plain_dsn
from tests.legacy import flask_data as fd


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        "APP_ENV": "test",
        "DATABASE_URL": plain_dsn(settings),
        "JWT_SECRET": TEST_JWT_SECRET,
        "PIN_PEPPER": TEST_PIN_PEPPER,
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_TIME_COST": "1",
        "DATA_DIR": str(tmp_path),
    }


async def _seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await fd.add_quirks(conn)
        await fd.add_history(conn)
    finally:
        await conn.close()


async def _count(settings: Settings) -> int:
    conn = await asyncpg.connect(plain_dsn(settings))
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM users")
        return value
    finally:
        await conn.close()


def test_dry_run_writes_the_report_and_a_summary_then_resolve_and_import(
    settings: Settings, flask_url: str, tmp_path: Path
) -> None:
    asyncio.run(_seed(flask_url))
    runner = CliRunner()
    report_path = tmp_path / "report.json"
    args = ["legacy", "import", "--from", flask_url, "--report", str(report_path)]
    result = runner.invoke(main, [*args, "--dry-run"], env=_env(settings, tmp_path))
    assert result.exit_code == 0, result.output
    assert "DRY RUN" in result.output and "not imported, phone_collision: 2" in result.output
    assert "not imported, staff_role_required: 1" in result.output
    report = json.loads(report_path.read_text())
    assert report["dry_run"] is True and report["complete"] is True
    assert asyncio.run(_count(settings)) == 0

    # The operator's decisions, from the report's template.
    resolve = tmp_path / "resolve.json"
    resolve.write_text(json.dumps(report["resolve_template"]))
    staff = ["--staff-role", "admin=admin"]
    result = runner.invoke(main, [*args, "--resolve", str(resolve), *staff], env=_env(settings, tmp_path))
    assert result.exit_code == 0, result.output
    assert "1 granted authority by --staff-role" in result.output and "users recover" in result.output
    report = json.loads(report_path.read_text())
    assert report["dry_run"] is False and report["users"]["not_imported"] == 0
    assert asyncio.run(_count(settings)) == report["users"]["read"]


def test_bad_options_are_refused_with_a_clear_message(settings: Settings, flask_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "resolve.json"
    bad.write_text('{"101": "merge"}')
    base = ["legacy", "import", "--from", flask_url]
    result = runner.invoke(main, [*base, "--resolve", str(bad)], env=_env(settings, tmp_path))
    assert result.exit_code == 2 and "keep, unlink, skip" in result.output
    for grant in ("admin=root", "admin=user", "superuser=admin"):
        result = runner.invoke(main, [*base, "--staff-role", grant], env=_env(settings, tmp_path))
        assert result.exit_code == 2 and "USER_TYPE=ROLE" in result.output, grant
    result = runner.invoke(main, [*base, "--staff-role", "content_writer=support"], env=_env(settings, tmp_path))
    assert result.exit_code == 2 and "only user_type admin" in result.output
    result = runner.invoke(
        main, ["legacy", "import", "--from", "postgresql://127.0.0.1:1/none"], env=_env(settings, tmp_path)
    )
    assert result.exit_code == 1 and "cannot connect to the source" in result.output
