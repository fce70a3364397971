"""One log format for the service, uvicorn and the CLI; ``LOG_FORMAT=json`` for log shippers.

Every record goes through one formatter: ``text`` (a line for people) or ``json`` (one object per
line). Requests are logged once, by :class:`AccessLog` (uvicorn's own access log is off), with the
request id, route template, status, latency and the user id where a route learned it; never headers,
bodies or query strings, so no token, password or PIN reaches a log.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
import uuid
from typing import Any, Literal

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a request's record carries beyond the message (JsonFormatter copies these when present).
REQUEST_FIELDS = ("request_id", "method", "route", "status", "latency_ms", "user_id", "client")
USER_ID_STATE_KEY = "log_user_id"  # a route that knows the user puts its id here, in scope["state"]
REQUEST_ID_MAX = 64
access_logger = logging.getLogger("app.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


JsonFormatter.converter = time.gmtime


def formatter_config(log_format: LogFormat) -> dict[str, Any]:
    if log_format == "json":
        return {"()": JsonFormatter}
    return {"format": TEXT_FORMAT}


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the CLI and for uvicorn (its ``log_config``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"standard": formatter_config(log_format)},
        # stdout, as twelve-factor log collectors (and a person at the terminal) expect.
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "standard", "stream": "ext://sys.stdout"}
        },
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {
            # uvicorn's loggers go to the root's handler (one format); its access log is AccessLog's.
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
            "pgserver": {"level": "WARNING"},
            "alembic.runtime.plugins": {"level": "WARNING"},
            # httpx logs every request's URL at INFO: a webhook endpoint's or the SMS provider's URL
            # may carry a token in its path, and the deliverer logs what matters itself.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def configure_logging(level: str, log_format: LogFormat) -> None:
    logging.config.dictConfig(logging_config(level, log_format))


class AccessLog:
    """ASGI middleware: one record per HTTP request, after its response started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        if not access_logger.isEnabledFor(logging.INFO):
            # Nothing would be logged (LOG_LEVEL above INFO): no request id to make, no send to wrap.
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:REQUEST_ID_MAX] or uuid.uuid4().hex

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = scope.get("path_template") or scope["path"]
            latency_ms = round((time.perf_counter() - started) * 1000, 1)
            access_logger.info(
                "%s %s %s %.1f ms",
                scope["method"],
                route,
                status,
                latency_ms,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": latency_ms,
                    "user_id": scope["state"].get(USER_ID_STATE_KEY),
                },
            )
