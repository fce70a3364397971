"""The security dashboard in a real browser (Debian's chromium, headless), as a person uses it."""

import asyncio
import concurrent.futures
import shutil

import asyncpg
import httpx
import pytest

from tests.conftest import plain_dsn
from tests.helpers import STRONG_PASSWORD
from tests.servers import api_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"),
]
SECURITY_PHONE = "0788 700 800"


@pytest.fixture
def server(settings, tmp_path):
    with api_server(settings, tmp_path, TRUSTED_PROXIES="127.0.0.1/32") as base:
        with httpx.Client(base_url=base) as http:
            for phone, role in ((SECURITY_PHONE, "security"), ("0788 700 801", "user")):
                response = http.post(
                    "/api/auth/register",
                    json={"name": f"Dash {role.title()}", "phone_number": phone, "password": STRONG_PASSWORD},
                )
                assert response.status_code == 201, response.text
            for index in range(7):  # a small attack from one address: 5 failures, then refusals
                http.post(
                    "/api/auth/login",
                    json={"phone_number": "0788 700 999", "password": "Wrong-Password-77"},
                    headers={"X-Forwarded-For": "41.186.7.9", "User-Agent": f"attack-tool/{index}"},
                )
        yield base


def promote(settings, phone, role):
    async def update():
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            await conn.execute("UPDATE users SET role = $1 WHERE phone_number = $2", role, phone)
        finally:
            await conn.close()

    # Playwright's sync API runs an event loop in this thread: use another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, update()).result()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield instance
        instance.close()


def sign_in(page, base, phone):
    page.goto(f"{base}/audit")
    page.fill("#signin-form input[name=phone_number]", phone)
    page.fill("#signin-form input[name=password]", STRONG_PASSWORD)
    page.click("#signin-form button[type=submit]")


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_security_account_sees_chart_offenders_and_filtered_attempts(server, settings, browser):
    promote(settings, "+250788700800", "security")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, server, SECURITY_PHONE)
    page.wait_for_selector("#dashboard:not([hidden])")
    page.wait_for_selector("#attempts tbody tr", timeout=15000)

    assert page.locator("#chart canvas").count() == 1  # the chart was drawn
    assert "attempts" in page.text_content("#totals")
    assert "41.186.7.9" in page.text_content("#top-ips")
    assert "+250788700999" in page.text_content("#top-phones")
    table = page.text_content("#attempts")
    assert "unknown_account" in table and "rate_limited" in table  # 5 guesses verified, then refusals

    page.fill("#filters input[name=ip]", "41.186.0.0/16")
    page.select_option("#filters select[name=reason]", "rate_limited")
    page.click("#filters button[type=submit]")
    expect(page.locator("#attempts tbody tr")).to_have_count(2)
    rows = page.locator("#attempts tbody tr").all_text_contents()
    assert all("rate_limited" in row and "41.186.7.9" in row for row in rows)

    with page.expect_download() as download:
        page.click("#export-csv")
    content = download.value.path().read_text()
    assert content.splitlines()[0].startswith("id,") or "event_id" in content.splitlines()[0]
    assert content.count("rate_limited") == 2
    assert errors == []


def test_ordinary_account_is_turned_away(server, browser):
    page = browser.new_page()
    sign_in(page, server, "0788 700 801")
    expect(page.locator("#signin-error")).to_contain_text("not a security team account")
    assert page.locator("#dashboard").is_hidden()


def test_page_ships_everything_itself(server):
    page = httpx.get(f"{server}/audit")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="http' not in page.text and 'href="http' not in page.text  # nothing from a CDN
    assert httpx.get(f"{server}/audit/static/vendor/uPlot.iife.min.js").status_code == 200
