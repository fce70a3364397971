"""``db downgrade`` dropped audit_queries (who read the login history) without a word (issue 17, item 9).

Now it says what each downgrade drops, with row counts, and in production refuses without
``--i-understand-this-deletes-data``. Each test works on a scratch database of its own.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from app.core.settings import Settings
from app.db import migrations
from tests.audit.history.test_cli import on_db, run_cli

PRODUCTION = {
    "APP_ENV": "production",
    "JWT_SECRET": secrets.token_hex(32),
    "PIN_PEPPER": secrets.token_hex(32),
    "SIGNING_KEYS_SECRET": secrets.token_hex(32),
    "CORS_ALLOW_ORIGINS": "https://app.example.org",
    "PUBLIC_URL": "https://auth.example.org",
}


def migrated_with_an_audit_read(scratch: Settings) -> None:
    migrations.upgrade(scratch)
    on_db(
        scratch,
        lambda conn: conn.execute(
            "INSERT INTO audit_queries (actor, origin, action, filters) VALUES ('+250788000001', 'api', 'list', '{}')"
        ),
    )


def table_exists(scratch: Settings, name: str) -> bool:
    return bool(on_db(scratch, lambda conn: conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)))


def test_production_refuses_a_downgrade_that_deletes_the_audit_trail(settings: Settings, tmp_path: Path) -> None:
    with migrations.scratch_database(settings) as scratch:
        migrated_with_an_audit_read(scratch)
        refused = run_cli(scratch, tmp_path, ["db", "downgrade", "0001"], **PRODUCTION)
        assert refused.exit_code == 1, refused.output
        assert "--i-understand-this-deletes-data" in refused.output
        assert "drops table audit_queries (1 rows)" in refused.output
        assert table_exists(scratch, "audit_queries")
        assert migrations.current_revisions(scratch) == migrations.heads(scratch)

        agreed = run_cli(
            scratch, tmp_path, ["db", "downgrade", "0001", "--i-understand-this-deletes-data"], **PRODUCTION
        )
        assert agreed.exit_code == 0, agreed.output
        assert not table_exists(scratch, "audit_queries")


def test_every_downgrade_says_what_it_drops(settings: Settings, tmp_path: Path) -> None:
    with migrations.scratch_database(settings) as scratch:
        migrated_with_an_audit_read(scratch)
        to_base = run_cli(scratch, tmp_path, ["db", "downgrade", "base"])
        assert to_base.exit_code == 0, to_base.output
        for table in ("audit_queries (1 rows)", "users (0 rows)", "refresh_tokens", "login_attempts"):
            assert f"drops table {table}" in to_base.output
        assert not table_exists(scratch, "users")
