"""``GET /audit``: the security team's dashboard, one static page over the audit API.

Everything it runs is shipped in app/audit/history/static (uPlot vendored from npm); the page itself
is dashboard.html, kept out of the static folder so that it has one address only. Every response
of both carries a strict Content-Security-Policy (no inline script, nothing from another origin,
no framing by another page: clickjacking of the security team's sign-in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PAGE = HERE / "dashboard.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}


@get("/audit", include_in_schema=False, cache_control=None)
async def dashboard_page() -> Response[bytes]:
    return Response(PAGE.read_bytes(), media_type="text/html", headers=SECURITY_HEADERS)


def with_security_headers(response: Response[Any]) -> Response[Any]:
    response.headers.update(SECURITY_HEADERS)
    return response


dashboard_assets = create_static_files_router(
    path="/audit/static",
    directories=[STATIC],
    include_in_schema=False,
    name="audit-static",
    after_request=with_security_headers,
)
DASHBOARD_HANDLERS: list[ControllerRouterHandler] = [dashboard_page, dashboard_assets]
