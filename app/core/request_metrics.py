"""Request metrics: Litestar's Prometheus middleware under the service's namespace, with fewer labels.

``ladys_essence_auth_requests_total``, ``..._request_duration_seconds``, ``..._requests_error_total``
(5xx) by ``method``, ``path`` (the route's template) and ``status_code``, and
``..._requests_in_progress`` by ``method`` and ``path``. Requests the login gate answers itself never
get here: ``ladys_essence_auth_login_refused_total`` counts them. The header form of refresh, answered in
front of routing too, is recorded in these series by ``observe_answer``.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.connection.request import Request
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import Receive, Scope, Send
from prometheus_client import Gauge

from app.core.prometheus import NAMESPACE


class RequestMetrics(PrometheusMiddleware):
    """Litestar's request metrics, with an in-progress gauge labelled by method and path only.

    Litestar's own middleware labels the in-progress gauge with ``status_code`` (always 200 while a
    request is in progress) and every series with a constant ``app_name``; the prefix is the
    service's namespace.
    """

    def _get_default_labels(self, request: Request[Any, Any, Any]) -> dict[str, str | int | float]:
        labels = super()._get_default_labels(request)
        labels.pop("app_name", None)
        return labels

    def _in_progress(self) -> Any:
        name = f"{self._config.prefix}_requests_in_progress"
        if name not in PrometheusMiddleware._metrics:
            PrometheusMiddleware._metrics[name] = Gauge(
                name, "Requests being handled now.", labelnames=["method", "path"], multiprocess_mode="livesum"
            )
        return PrometheusMiddleware._metrics[name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request[Any, Any, Any](scope, receive)
        labels = self._get_default_labels(request)
        span: dict[str, float] = {"start_time": time.perf_counter(), "end_time": 0, "duration": 0, "status_code": 200}
        in_progress = self._in_progress().labels(labels["method"], labels["path"])
        in_progress.inc()
        try:
            await self.app(scope, receive, self._get_wrapped_send(send, span))
        finally:
            in_progress.dec()
            self.observe(labels, int(span["status_code"]), span["duration"])

    def observe(self, labels: dict[str, str | int | float], status: int, seconds: float) -> None:
        """One answered request in the series (``labels``: method and path)."""
        labels = {**labels, "status_code": status}
        values = list(labels.values())
        if status >= 500:
            self.requests_error_count(labels).labels(*values).inc()
        self.request_count(labels).labels(*values).inc()
        self.request_time(labels).labels(*values).observe(seconds)


_CONFIG = PrometheusConfig(prefix=NAMESPACE, group_path=True, middleware_class=RequestMetrics)
_recorder = RequestMetrics(app=None, config=_CONFIG)  # type: ignore[arg-type]  # records only; never called


def observe_answer(method: str, path: str, status: int, seconds: float) -> None:
    """A request answered in front of routing (the header form of refresh), in the same series as the
    middleware's: what dashboards read of a route does not depend on which path answered it."""
    _recorder.observe({"method": method, "path": path}, status, seconds)


def request_metrics() -> DefineMiddleware:
    """The middleware of ``create_app``: ``ladys_essence_auth_requests_total{method,path,status_code}`` and co."""
    return _CONFIG.middleware
