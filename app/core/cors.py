"""The one CORS policy: which browser origins may call the API, and the headers that say so.

The field client (``clients/web-client.md``) calls from another origin with credentials, so an
allowed origin is echoed with ``Access-Control-Allow-Credentials: true`` (browsers refuse ``*`` for
credentialed calls). :class:`CorsMiddleware` sits outermost, in front of the login gate, so every
answer (gate refusals, 404s, errors) and every preflight follows this one policy.

``CORS_ALLOW_ORIGINS`` entries:
- ``https://app.example.org``: that origin exactly (scheme, host, port);
- ``https://*.vercel.app``: ``*`` stands for one DNS label (``my-app-git-x.vercel.app``, not ``a.b.vercel.app``);
- ``https://localhost:*``: any port, or none;
- ``^https?://localhost(:\\d+)?$``: an entry starting with ``^`` is a regular expression matched
  against the whole origin;
- ``*``: any origin, without credentials (the field client cannot work with it).

Hand-written rather than Litestar's ``CORSConfig``: that one sends ``Allow-Credentials``,
``Allow-Headers`` and ``Allow-Methods`` to disallowed origins too, answers a refused preflight in
plain text, and its ``*`` in an origin matches any characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app.core.errors import AppError, encode_error

DEVELOPMENT_ORIGINS = (
    "http://localhost:3000",
    "http://localhost:5173",
    "http://127.0.0.1:3000",
    "capacitor://localhost",
    "http://localhost",
)
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, Accept, Origin, X-Requested-With"
# What a script on the page may read of an answer besides the simple headers: the rate limit's.
EXPOSE_HEADERS = "Retry-After, RateLimit, RateLimit-Policy"
PREFLIGHT_MAX_AGE = 86400
ENCODED_ORIGINS_CACHED = 256

_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>[^/:?#\s]+)(?P<port>:(?:\d+|\*))?")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"


class CorsOriginInvalid(ValueError):
    """A ``CORS_ALLOW_ORIGINS`` entry that is not an origin, a pattern or a regular expression."""


class CorsOriginRefused(AppError):
    status_code = 403
    code = "cors_origin_not_allowed"
    message = "This web origin may not call the API. The deployment admits origins in CORS_ALLOW_ORIGINS."


def _entry_pattern(entry: str) -> str:
    """The regular expression of one entry (anchored by the caller's fullmatch)."""
    if entry.startswith("^"):
        try:
            re.compile(entry)
        except re.error as exc:
            raise CorsOriginInvalid(f"CORS_ALLOW_ORIGINS: {entry!r} is not a valid regular expression: {exc}") from exc
        return entry.removeprefix("^").removesuffix("$")
    match = _ORIGIN.fullmatch(entry.lower().rstrip("/"))
    if match is None:
        raise CorsOriginInvalid(
            f"CORS_ALLOW_ORIGINS: {entry!r} is not an origin (scheme://host[:port]), a pattern or a ^regex"
        )
    labels = match["host"].split(".")
    if any(label != "*" and "*" in label for label in labels):
        raise CorsOriginInvalid(f"CORS_ALLOW_ORIGINS: in {entry!r}, '*' must be a whole host label")
    host = r"\.".join(_LABEL if label == "*" else re.escape(label) for label in labels)
    port = match["port"] or ""
    port_pattern = r"(?::\d+)?" if port == ":*" else re.escape(port)
    return f"{re.escape(match['scheme'])}://{host}{port_pattern}"


@dataclass(frozen=True)
class CorsPolicy:
    """Parsed ``CORS_ALLOW_ORIGINS``: exact origins, patterns, or any origin (then no credentials)."""

    exact: frozenset[str]
    patterns: re.Pattern[str] | None
    allow_any: bool

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CorsPolicy:
        entries = [entry.strip() for entry in entries if entry.strip()]
        if "*" in entries:
            return cls(frozenset(), None, allow_any=True)
        exact: set[str] = set()
        patterns: list[str] = []
        for entry in entries:
            pattern = _entry_pattern(entry)
            if entry.startswith("^") or "*" in entry:
                patterns.append(pattern)
            else:
                exact.add(entry.lower().rstrip("/"))
        combined = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        return cls(frozenset(exact), combined, allow_any=False)

    @property
    def credentials(self) -> bool:
        return not self.allow_any

    def allows(self, origin: str) -> bool:
        if self.allow_any:
            return True
        if origin in self.exact or origin.lower() in self.exact:
            return True
        return self.patterns is not None and self.patterns.fullmatch(origin) is not None

    def headers_for(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an ordinary answer to ``origin`` (none for a refused one)."""
        if self.allow_any:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSE_HEADERS}
        if not origin or not self.allows(origin):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        }

    def preflight_headers(self, origin: str) -> dict[str, str]:
        headers = self.headers_for(origin)
        headers.pop("Access-Control-Expose-Headers", None)
        if headers:
            headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        return headers


def _is_preflight(scope: HTTPScope, headers: dict[bytes, bytes]) -> bool:
    return scope["method"] == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers


class CorsMiddleware:
    """Plain ASGI, outermost: answers preflights itself and adds the policy's headers to every answer."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy
        self._encoded: dict[str | None, list[tuple[bytes, bytes]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        origin_raw = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin_raw = value  # the last one decides, for answers and preflights alike (as ever)
        origin = origin_raw.decode("latin-1") if origin_raw else None
        if origin is not None and scope["method"] == "OPTIONS" and _is_preflight(scope, dict(scope["headers"])):
            await self._preflight(origin, send)
            return
        added = self._encoded_headers(origin)
        vary = not self.policy.allow_any

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _answer_headers(message.get("headers", []), vary, added)}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _encoded_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The policy's headers for ``origin``, encoded once per origin (a bounded cache: origins come from clients)."""
        encoded = self._encoded.get(origin)
        if encoded is None:
            policy_headers = self.policy.headers_for(origin)
            encoded = [(name.lower().encode(), value.encode()) for name, value in policy_headers.items()]
            if len(self._encoded) >= ENCODED_ORIGINS_CACHED:
                self._encoded.clear()
            self._encoded[origin] = encoded
        return encoded

    async def _preflight(self, origin: str, send: Send) -> None:
        headers = self.policy.preflight_headers(origin)
        if headers:
            await _send(send, 204, b"", {**headers, "Vary": "Origin"} if self.policy.credentials else headers)
            return
        refused = CorsOriginRefused()
        await _send(
            send, refused.status_code, encode_error(refused), {"Content-Type": "application/json", "Vary": "Origin"}
        )


def _answer_headers(
    raw: Iterable[tuple[bytes, bytes]], vary: bool, added: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The answer's headers under this policy, in one pass: any ``Access-Control-*`` the app set is
    dropped for the policy's own (``added``), and with ``vary`` the answer says it depends on
    ``Origin``, merged into any ``Vary`` already there."""
    headers: list[tuple[bytes, bytes]] = []
    varies: list[bytes] = []
    for name, value in raw:
        lowered = name.lower()
        if lowered.startswith(b"access-control-"):
            continue
        if vary and lowered == b"vary":
            varies += [v.strip() for v in value.split(b",") if v.strip()]
            continue
        headers.append((name, value))
    if vary:
        if not any(v.lower() == b"origin" for v in varies):
            varies.append(b"Origin")
        headers.append((b"vary", b", ".join(varies)))
    headers += added
    return headers


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    start: Any = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body}
    await send(end)
