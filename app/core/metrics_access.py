"""Who may read ``GET /metrics``: Prometheus with ``Authorization: Bearer $METRICS_TOKEN``.

A token on the API's own port, rather than a separate listener (``METRICS_PORT``): with several
uvicorn workers a second listener per worker would fight over one port, while a guarded route works
for any number of workers (each answers for the whole instance: app/core/prometheus.py). Without
``METRICS_TOKEN``, production refuses ``/metrics``; development and tests keep it open on their
loopback address.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.core.errors import NotAuthenticated


class MetricsTokenRequired(NotAuthenticated):
    code = "metrics_token_required"
    message = "GET /metrics needs Authorization: Bearer with the METRICS_TOKEN of this deployment."


def require_metrics_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard of the metrics route."""
    settings = connection.app.state.settings
    expected: str | None = settings.metrics_token
    if expected is None:
        if settings.app_env == "production":
            raise MetricsTokenRequired(headers={"WWW-Authenticate": "Bearer"})
        return
    scheme, _sep, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise MetricsTokenRequired(headers={"WWW-Authenticate": "Bearer"})
