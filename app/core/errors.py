"""Domain exceptions and the one place that turns any exception into an HTTP response.

Every error body is JSON with a human ``message`` (the Flask-era clients show it as is) and a
machine ``code``; validation errors add ``errors: [{field, message}]``. Nothing from a driver or a
stack trace reaches the client.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from advanced_alchemy.exceptions import DuplicateKeyError, NotFoundError, RepositoryError
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger("app.core.errors")


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class FieldErrors:
    """Collects field errors so that every problem of a request is reported at once."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field_name: str, message: str) -> None:
        if all(item.field != field_name for item in self.items):
            self.items.append(FieldError(field_name, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(self.items)


class AppError(Exception):
    """A failure the client should hear about; subclasses fix status, code and message."""

    status_code = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.errors = errors or []
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code, **self.extra}
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return body


class ValidationFailed(AppError):
    code = "validation_error"
    message = "Some fields need attention."

    def __init__(self, errors: list[FieldError], message: str | None = None) -> None:
        super().__init__(message or (errors[0].message if len(errors) == 1 else None), errors=errors)


class InvalidCredentials(AppError):
    """The one answer for unknown phone, wrong password or PIN, PIN not enabled, inactive account."""

    status_code = 401
    code = "invalid_credentials"
    message = "Incorrect phone number, password or PIN."


class InvalidToken(AppError):
    status_code = 401
    code = "invalid_token"
    message = "Your session is no longer valid. Please sign in again."


class NotAuthenticated(AppError):
    status_code = 401
    code = "not_authenticated"
    message = "Please sign in to continue."


class PermissionDenied(AppError):
    status_code = 403
    code = "forbidden"
    message = "You do not have permission to do this."


class Conflict(AppError):
    status_code = 409
    code = "conflict"


def try_again_in(seconds: int) -> str:
    """The wait of a 429 in words, never shorter than ``seconds``: the web page shows only the message
    (it ignores ``Retry-After``), so the message must say how long. Seconds under a minute, then
    minutes, from two hours on hours; always rounded up."""
    seconds = max(1, seconds)
    if seconds < 60:
        count, unit = seconds, "second"
    elif seconds < 2 * 3600:
        count, unit = -(-seconds // 60), "minute"
    else:
        count, unit = -(-seconds // 3600), "hour"
    return f"Please try again in {count} {unit}{'' if count == 1 else 's'}."


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    message = "Too many attempts. Please wait before trying again."


class PinLocked(AppError):
    status_code = 403
    code = "pin_locked"
    message = "PIN sign-in is locked after too many wrong PINs. Sign in with your password to unlock it."


class AccountLocked(RateLimited):
    code = "account_locked"
    cause = "Too many failed sign-ins for this phone number."
    message = f"{cause} Please wait before trying again."


UNAVAILABLE_RETRY_AFTER = 30  # seconds a client is told to wait when a dependency is down


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    message = "The service is temporarily unavailable. Please try again shortly."


class LimiterUnavailable(ServiceUnavailable):
    """The limiter's store could not answer or take the write: the attempt is refused (fail closed).

    ``detail`` (the driver's words) is for the logs only; the client hears the fixed message.
    """

    code = "rate_limiter_unavailable"
    message = "Sign-in is temporarily unavailable. Please try again in a minute."

    def __init__(self, detail: str = "", *, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})
        self.detail = detail


class DatabaseUnavailable(ServiceUnavailable):
    """Postgres cannot be reached (stopped, restarting, connections refused) or no pooled connection came free."""

    code = "database_unavailable"
    message = "The service is temporarily unavailable. Please try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(DATABASE_RETRY_AFTER)})


DATABASE_RETRY_AFTER = 5  # seconds: Postgres restarts or fails over in about this (docs/operations.md)

# What a lost or refused database connection looks like from asyncpg and the socket beneath it.
_CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, including "too many clients"
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.OperatorInterventionError,  # 57P01/57P02: administrator or crash shutdown
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    ConnectionError,  # refused, reset, aborted
    socket.gaierror,  # the database's host name does not resolve
    PoolTimeout,  # no pooled connection came free within the pool's timeout
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it was raised from) is a database connection failing, not a bug."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CONNECTION_FAILURES):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, DBAPIError) and isinstance(current.orig, OSError):
            return True  # the connect itself: unreachable host, timed out
        if isinstance(current, OSError) and _raised_by_the_driver(current):
            return True  # a Unix socket that is gone (FileNotFoundError), a connect that timed out
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            return True
        if isinstance(current, asyncpg.InternalClientError) and "another operation" in str(current):
            # A pooled connection whose server end was terminated mid-batch: the next operation on it
            # is refused before anything is sent (found by an attacker's pass: docs/security.md).
            return True
        code = getattr(current, "sqlstate", None)
        if isinstance(code, str) and code.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
            return True  # a server shutting down or starting up (57P01-57P03), a connection failure (08...)
        current = current.__cause__ or current.__context__
    return False


UNAVAILABLE_SQLSTATE_PREFIXES = ("57P01", "57P02", "57P03", "08")


def _raised_by_the_driver(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith("asyncpg."):
            return True
        traceback = traceback.tb_next
    return False


def describe(exc: BaseException) -> str:
    """``Type: message`` of the error's root cause, never raising: advanced-alchemy's wrappers cannot
    always be turned into text (``str()`` joins arguments that may be ``None``)."""
    root = exc
    while (inner := getattr(root, "orig", None) or root.__cause__) is not None and inner is not root:
        root = inner
    try:
        text = str(root)
    except Exception:  # a message that cannot be built must not lose the log line
        text = "(no message)"
    return f"{type(root).__name__}: {text}"


class OutageLog:
    """One log line per outage, not one per request: the first failure is logged with its cause,
    the rest are counted, and the count is reported when failures stop for ``quiet_seconds``."""

    def __init__(self, name: str, quiet_seconds: float = 30.0) -> None:
        self.name = name
        self.quiet_seconds = quiet_seconds
        self._last = float("-inf")
        self._count = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last > self.quiet_seconds:
            if self._count > 1:
                logger.warning("%s: the previous outage answered %d requests with 503", self.name, self._count)
            self._count = 0
            logger.error("%s unavailable (%s); answering 503 until it is back", self.name, describe(exc))
        self._count += 1
        self._last = now


database_outages = OutageLog("database")


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    message = "Send the request body as JSON (Content-Type: application/json)."


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    401: ("not_authenticated", "Please sign in to continue."),
    403: ("forbidden", "You do not have permission to do this."),
    404: ("not_found", "No route matches this path. The API's routes are listed at /schema."),
    405: ("method_not_allowed", "This address does not accept that method."),
    413: ("payload_too_large", PayloadTooLarge.message),
    415: ("unsupported_media_type", UnsupportedMediaType.message),
    429: ("rate_limited", RateLimited.message),
    503: ("service_unavailable", ServiceUnavailable.message),
}


def _json(body: dict[str, Any], status: int, headers: Mapping[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status, headers=dict(headers or {}), media_type="application/json")


def app_error_handler(_: Request[Any, Any, Any], exc: AppError) -> Response[Any]:
    return _json(exc.body(), exc.status_code, exc.headers)


_error_encoder = msgspec.json.Encoder()


def encode_error(exc: AppError) -> bytes:
    """The JSON body of ``exc``, for answers sent before routing (the login gate): the same as the handler's."""
    return _error_encoder.encode(exc.body())


def validation_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's own body/parameter validation: wrong types, missing fields, malformed JSON."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            errors.append(FieldError(_field_named(item, message), _human(message)))
    if not errors:
        return _json({"message": "The request body is not valid JSON.", "code": "malformed_json"}, 400)
    return _json(ValidationFailed(errors).body(), 400)


# msgspec names a missing field in its message; Litestar's key is then the whole body ("data").
MISSING_FIELD = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$\.?([^`]*)`)?")


def _field_named(item: dict[str, Any], message: str) -> str:
    key = str(item.get("key") or item.get("source") or "body")
    missing = MISSING_FIELD.match(message)
    if missing and key in ("data", "body"):
        name, parent = missing.groups()
        return f"{parent}.{name}" if parent else name
    return key.removeprefix("$.")


def _human(message: str) -> str:
    if message.startswith("Object missing required field"):
        return "This field is required."
    if message.startswith("Expected `"):
        kind = message.split("`")[1]
        return {"str": "Enter text.", "int": "Enter a whole number.", "bool": "Enter true or false."}.get(
            kind, f"Expected {kind}."
        )
    return "This value is not valid."


SETTINGS_PREFIX = "/api/settings/"
SETTINGS_ROUTES = ("account", "bundle", "privacy", "privacy/parent-access", "umwari/status")


def _settings_not_found(path: str) -> str:
    """The settings page shows ``message`` as a toast: say which call the page made that is not served."""
    shown = path if len(path) <= 100 else path[:100] + "..."
    routes = ", ".join(SETTINGS_PREFIX + route for route in SETTINGS_ROUTES)
    return f"This service has no settings route {shown}; it serves {routes}."


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, SerializationException) or (status == 400 and "JSON" in str(exc.detail)):
        return _json({"message": "The request body is not valid JSON.", "code": "malformed_json"}, 400)
    code, message = _HTTP_CODES.get(status, ("error", "The request could not be processed."))
    if isinstance(exc, NotFoundException) and request.url.path.startswith(SETTINGS_PREFIX):
        message = _settings_not_found(request.url.path)
    if status >= 500:
        logger.error("HTTP %s: %s", status, exc.detail)
    return _json({"message": message, "code": code}, status, exc.headers)


def too_deep_handler(_: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """msgspec gives up on absurdly nested JSON; that is the client's problem, not a crash."""
    return _json({"message": "The request body is nested too deeply.", "code": "malformed_json"}, 400)


# Postgres gave up on this transaction because of another one (deadlock_detected, serialization_failure,
# lock_not_available): rolled back whole, nothing half-done, and the same request will likely pass again.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
CONFLICT_RETRY_AFTER = 1


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a database error, however deep the drivers wrapped it."""
    while exc is not None:
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if isinstance(code, str):
            return code
        exc = getattr(exc, "orig", None) or exc.__cause__
    return None


def transient_conflict(request: Request[Any, Any, Any], exc: BaseException) -> Response[Any] | None:
    """503 with Retry-After for a transaction Postgres rolled back for a lock conflict; None otherwise."""
    if _sqlstate(exc) not in TRANSIENT_SQLSTATES:
        return None
    logger.warning("transaction rolled back by a lock conflict on %s %s: %s", request.method, request.url.path, exc)
    body = {"message": "This clashed with a change made at the same moment. Please try again.", "code": "busy"}
    return _json(body, 503, {"Retry-After": str(CONFLICT_RETRY_AFTER)})


def database_error_handler(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[Any]:
    return transient_conflict(request, exc) or internal_error_handler(request, exc)


def repository_error_handler(request: Request[Any, Any, Any], exc: RepositoryError) -> Response[Any]:
    """advanced-alchemy's wrapped database errors (its own handler would echo the driver's message)."""
    conflict = transient_conflict(request, exc)
    if conflict is not None:
        return conflict
    if isinstance(exc, NotFoundError):
        return _json({"message": "That record does not exist.", "code": "not_found"}, 404)
    if is_database_unavailable(exc):
        return internal_error_handler(request, exc)
    if isinstance(exc, DuplicateKeyError) or isinstance(exc.__cause__, DatabaseIntegrityError):
        body = {"message": "This clashes with a change made at the same moment. Please try again.", "code": "conflict"}
        return _json(body, 409)
    return internal_error_handler(request, exc)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if is_database_unavailable(exc):
        database_outages.failed(exc)
        return app_error_handler(request, DatabaseUnavailable())
    conflict = transient_conflict(request, exc)  # asyncpg's own errors, from the paths without the ORM
    if conflict is not None:
        return conflict
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"message": "Something went wrong on our side. Please try again.", "code": "internal_error"}
    return _json(body, HTTP_500_INTERNAL_SERVER_ERROR)


# ---- what the OpenAPI document says about errors ------------------------------------------------


class FieldErrorBody(msgspec.Struct):
    field: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: ``errors`` on validation errors, ``retry_after`` on some 429s; ``error`` on the
    admin panel's refusals (the Flask-era name of ``message``) and, with ``error_description``, on the
    OAuth endpoints' (RFC 6749 section 5.2)."""

    message: str
    code: str
    errors: list[FieldErrorBody] | msgspec.UnsetType = msgspec.UNSET
    retry_after: int | msgspec.UnsetType = msgspec.UNSET
    error: str | msgspec.UnsetType = msgspec.UNSET
    error_description: str | msgspec.UnsetType = msgspec.UNSET


ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, or fields that need attention (listed in `errors`)",
    401: "Not signed in, or the token is not valid",
    403: "Not allowed",
    404: "No such resource (an unknown id, or one this account may not see)",
    409: "The phone number or email address belongs to another account",
    413: "The request body is too large",
    415: "The request body is not JSON",
    429: "Too many attempts; see Retry-After",
    503: "A dependency is unavailable; try again shortly",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route answers with; ``s401="..."`` overrides a description."""
    return {
        status: ResponseSpec(
            ErrorBody, description=descriptions.get(f"s{status}", ERROR_DESCRIPTIONS[status]), generate_examples=False
        )
        for status in statuses
    }


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    AppError: app_error_handler,
    ValidationException: validation_handler,
    NotFoundException: http_exception_handler,
    MethodNotAllowedException: http_exception_handler,
    HTTPException: http_exception_handler,
    RecursionError: too_deep_handler,
    RepositoryError: repository_error_handler,
    DBAPIError: database_error_handler,
    Exception: internal_error_handler,
}
