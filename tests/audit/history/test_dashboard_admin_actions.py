"""The dashboard's "Admin actions" panel in a real browser (Debian's chromium, headless)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import asyncpg

from tests.audit.history.test_dashboard import (  # noqa: F401 (fixtures)
    SECURITY_PHONE,
    browser,
    expect,
    promote,
    pytestmark,
    server,
    sign_in,
)
from tests.conftest import plain_dsn


def record_action(settings, action: str, actor: str) -> None:
    async def insert():
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            await conn.execute(
                "INSERT INTO admin_actions (actor, origin, action, target_user_id, details, client_ip)"
                " VALUES ($1, 'api', $2, 42, '{\"locks_cleared\": 1}', '41.186.7.9')",
                actor,
                action,
            )
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, insert()).result()


def test_security_account_sees_and_exports_admin_actions(server, settings, browser):  # noqa: F811
    promote(settings, "+250788700800", "security")
    record_action(settings, "unlock", "+250788700111")
    record_action(settings, "recovery", "ops@host")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, server, SECURITY_PHONE)
    expect(page.locator("#admin-actions tbody tr")).to_have_count(2)
    rows = page.locator("#admin-actions tbody tr").all_text_contents()
    assert "recovery" in rows[0] and "ops@host" in rows[0]  # newest first
    assert "unlock" in rows[1] and "41.186.7.9" in rows[1] and "locks_cleared" in rows[1]
    with page.expect_download() as download:
        page.click("#admin-export-csv")
    lines = download.value.path().read_text().splitlines()
    assert lines[0].startswith("id,created_at,") and len(lines) == 3
    assert errors == []
