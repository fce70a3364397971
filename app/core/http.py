"""Small facts about requests that several packages read the same way: user agents, optional bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import uuid_utils
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Operation, RequestBody, Schema
from litestar.types import Send

from app.core.errors import AppError, UnsupportedMediaType, encode_error

USER_AGENT_MAX = 255  # the Flask-era column's width, kept by the audit table and the sessions


def user_agent_of(value: str | bytes | None) -> str | None:
    """The ``User-Agent`` as stored: cut to the column's width, ``None`` when absent or empty.

    Without NUL, which Postgres text cannot hold: uvicorn refuses it in a header, but a server or
    proxy in front that let it through would otherwise fail every statement batched with it.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and "\x00" in value:
        value = value.replace("\x00", "")
    return value[:USER_AGENT_MAX] or None if value else None


# ---- answers given in front of routing (the login gate, the header form of refresh) ---------------


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, raw headers: what goes on the wire


def error_answer(exc: AppError, headers: dict[str, str]) -> Answer:
    """``exc`` as the app's error mapping answers it (its JSON body, its headers and ``headers``)."""
    body = encode_error(exc)
    return exc.status_code, body, json_headers(body, {**exc.headers, **headers})


def json_headers(body: bytes, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return raw_headers


async def send_error(send: Send, exc: AppError, headers: dict[str, str]) -> None:
    """Answer with ``exc`` exactly as the app's error mapping would, from outside the app."""
    await send_answer(send, error_answer(exc, headers))


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await send_answer(send, (status, body, json_headers(body, headers)))


async def send_answer(send: Send, answer: Answer) -> None:
    status, body, raw_headers = answer
    # A copy of the headers: an answer may be sent many times (the gate's refusals), a layer may append.
    start: Any = {"type": "http.response.start", "status": status, "headers": list(raw_headers)}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body}
    await send(end)


# ---- request bodies --------------------------------------------------------------------------------
# Below the user-agent helper, what several controllers share about bodies: the errors a body can
# get, routes whose body is optional (the Flask-era header form), and routes that take none.


BODY_ERRORS = (400, 413, 415)
BodyT = TypeVar("BodyT")


@dataclass
class OptionalBodyOperation(Operation):
    """A route that also takes no body at all (the Flask-era header form of refresh and logout).

    The body is documented as optional rather than as ``T | null``: JSON ``null`` is accepted too, but
    generated clients send an absent optional body as nothing only when its schema is not nullable.
    """

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False
            for media_type in self.request_body.content.values():
                schema = media_type.schema
                if isinstance(schema, Schema) and schema.one_of:
                    arms = [arm for arm in schema.one_of if not (isinstance(arm, Schema) and arm.type == "null")]
                    if len(arms) == 1:
                        self.request_body.description = self.request_body.description or schema.description
                        media_type.schema = arms[0]


async def optional_json_body(request: Request[Any, Any, Any], decoder: msgspec.json.Decoder[BodyT]) -> BodyT | None:
    """No body at all, JSON ``null``, or a JSON object of the decoder's shape; anything else a clear 400/415."""
    body = await request.body()
    if not body.strip():
        return None
    if "json" not in request.headers.get("content-type", "application/json"):
        raise UnsupportedMediaType()
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise AppError("The request body has the wrong shape.", code="validation_error") from exc
    except msgspec.DecodeError as exc:
        raise AppError("The request body is not valid JSON.", code="malformed_json") from exc


async def read_whole_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard: routes that take no body still read it, so an oversized one is the usual 413, not ignored."""
    if isinstance(connection, Request) and connection.method in ("POST", "PUT", "PATCH", "DELETE"):
        await connection.body()


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The caller's ``X-Request-ID`` (at most 64 characters), or a new one: the audit row's request id."""
    return (request.headers.get("x-request-id") or "")[:64] or str(uuid_utils.uuid4())
