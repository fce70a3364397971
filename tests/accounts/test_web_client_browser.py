"""The field client's calls from a page on another origin, in headless Chromium (the dashboard test's setup)."""

import contextlib
import functools
import http.server
import shutil
import threading

import httpx
import pytest

from tests.helpers import STRONG_PASSWORD
from tests.servers import api_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"),
]
PHONE = "0788 710 710"

# What the client's axios does: credentialed calls, JSON bodies, the Bearer header everywhere.
SIGN_IN = """async ([api, phone, password]) => {
    const read = async (response) => ({status: response.status, body: await response.json()});
    const health = await read(await fetch(api + "/health", {credentials: "include"}));
    const login = await read(await fetch(api + "/api/auth/login", {
        method: "POST",
        credentials: "include",
        headers: {"Content-Type": "application/json", "Authorization": "Bearer stale-token-from-localStorage"},
        body: JSON.stringify({phone_number: phone, password: password}),
    }));
    const bundle = await read(await fetch(api + "/api/settings/bundle", {
        credentials: "include",
        headers: {"Authorization": "Bearer " + login.body.access_token},
    }));
    return {health, login, bundle};
}"""

REFUSED = """async ([api]) => {
    try {
        await fetch(api + "/health", {credentials: "include"});
        return "read";
    } catch (error) {
        return error.name;
    }
}"""


@contextlib.contextmanager
def static_site(directory):
    """A second origin: a tiny static server on another loopback port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sites(settings, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>web client</title><p>Lady's Essence</p>")
    with contextlib.ExitStack() as stack:
        allowed, other = stack.enter_context(static_site(site)), stack.enter_context(static_site(site))
        api = stack.enter_context(api_server(settings, tmp_path, CORS_ALLOW_ORIGINS=f"{allowed},capacitor://localhost"))
        response = httpx.post(
            f"{api}/api/auth/register", json={"name": "Aline Uwase", "phone_number": PHONE, "password": STRONG_PASSWORD}
        )
        assert response.status_code == 201, response.text
        yield {"api": api, "allowed": allowed, "other": other}


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


def test_a_page_on_another_origin_signs_in_with_credentials(sites, browser):
    page = browser.new_page()
    page.goto(f"{sites['allowed']}/index.html")
    result = page.evaluate(SIGN_IN, [sites["api"], PHONE, STRONG_PASSWORD])
    assert result["health"]["status"] == 200 and result["health"]["body"]["status"] == "healthy"
    assert result["login"]["status"] == 200, result
    assert result["login"]["body"]["user"]["first_name"] == "Aline"
    assert result["login"]["body"]["access_token"] and result["login"]["body"]["refresh_token"]
    assert result["bundle"]["status"] == 200, result
    assert result["bundle"]["body"]["account"]["enable_pin_auth"] is False
    assert result["bundle"]["body"]["umwari"]["server_key_configured"] is False


def test_a_page_on_an_origin_not_listed_cannot_read_answers(sites, browser):
    page = browser.new_page()
    page.goto(f"{sites['other']}/index.html")
    assert page.evaluate(REFUSED, [sites["api"]]) == "TypeError"  # the browser hid the answer
