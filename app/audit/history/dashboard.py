"""``GET /audit``: the security team's dashboard, one static page over the audit API.

Everything it runs is shipped in app/audit/static (uPlot vendored from npm), served with a strict
Content-Security-Policy: no inline script, nothing from another origin.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@get("/audit", include_in_schema=False, cache_control=None)
async def dashboard_page() -> Response[bytes]:
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html", headers=SECURITY_HEADERS)


dashboard_assets = create_static_files_router(
    path="/audit/static", directories=[STATIC], include_in_schema=False, name="audit-static"
)
DASHBOARD_HANDLERS: list[ControllerRouterHandler] = [dashboard_page, dashboard_assets]
