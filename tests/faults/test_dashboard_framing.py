"""The dashboard cannot be framed by another site (clickjacking of the security team's sign-in)."""

from __future__ import annotations

import http.server
import shutil
import threading

import pytest

from app.core.embedded import free_port, stop_process
from tests.faults.support import serve_env, start_serve, wait_healthy

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASSETS = ("/audit/static/dashboard.js", "/audit/static/dashboard.css", "/audit/static/vendor/uPlot.iife.min.js")


async def test_every_route_of_the_dashboard_refuses_framing(client):
    page = await client.get("/audit")
    assert page.status_code == 200
    for path in ASSETS:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


async def test_the_page_has_one_address(client):
    page = await client.get("/audit")
    for copy in ("/audit/static/index.html", "/audit/static/", "/audit/static/dashboard.html"):
        response = await client.get(copy)
        assert response.status_code == 404, copy
        assert response.content != page.content


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")
def test_a_page_of_another_origin_cannot_frame_the_dashboard(settings, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    log = tmp_path / "serve.log"
    process = start_serve(serve_env(settings, tmp_path), port, log)
    attacker_dir = tmp_path / "attacker"
    attacker_dir.mkdir()
    frames = "".join(
        f'<iframe id="f{n}" src="http://127.0.0.1:{port}{path}"></iframe>'
        for n, path in enumerate(("/audit", "/audit/static/index.html"))
    )
    (attacker_dir / "index.html").write_text(f"<html><body>{frames}</body></html>")
    attacker_port = free_port()
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(attacker_dir))  # noqa: E731
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", attacker_port), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.goto(f"http://localhost:{attacker_port}/index.html")  # another origin than 127.0.0.1:port
                page.wait_for_timeout(1500)
                framed = [frame for frame in page.frames if frame != page.main_frame]
                assert framed, "the frames were not created"
                for frame in framed:
                    # A refused frame is left empty (chrome-error page): no sign-in form in it.
                    assert frame.query_selector("#signin-form") is None, frame.url
            finally:
                browser.close()
    finally:
        attacker.shutdown()
        stop_process(process, 20)
