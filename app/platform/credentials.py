"""Service credentials: the platform's services' secrets, and the guard that checks them.

A credential is ``les_`` + 32 random bytes (base64url), shown once by ``ladys-essence services
create``; only its SHA-256 is stored (a 256-bit random token needs no slow hash). The prefix lets a
guard tell it from a user's JWT without a database read, and lets secret scanners spot a leaked one.

A service presents it as OAuth 2.0 clients do (RFC 6749 section 2.3.1): ``client_id`` is the
credential's name and ``client_secret`` the ``les_`` token, in HTTP Basic (``client_secret_basic``)
or as form fields (``client_secret_post``); or the token alone as ``Authorization: Bearer les_...``;
or a short-lived access token from ``POST /oauth/token`` (app/platform/service_tokens.py) as Bearer.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from advanced_alchemy.exceptions import IntegrityError
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.history.query_log import Action, Actor, record_query
from app.core.errors import AppError, Conflict, InvalidToken, PermissionDenied
from app.db.models import ServiceCredential
from app.platform.scopes import SCOPES
from app.platform.service_tokens import ServiceToken, decode_service_token
from app.sessions.deps import bearer_token
from app.sessions.tokens import is_opaque_refresh_token

TOKEN_PREFIX = "les_"  # noqa: S105 (a prefix, not a secret)
TOKEN_PATTERN = re.compile(r"les_[A-Za-z0-9_-]{43}\Z")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
# RFC 6750 section 3 and RFC 7617: how a refused caller may authenticate.
CHALLENGE = 'Basic realm="ladys-essence", Bearer realm="ladys-essence"'
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


class CredentialRefusal(AppError):
    """A call refused for its credential; what is known of the caller, for an audit record.

    ``credential_name``: the credential presented, when it is one of ours (revoked, or without the
    scope); ``user_id``: the account whose token was presented instead of a credential.
    """

    credential_name: str | None = None
    user_id: int | None = None

    def known(self, *, credential_name: str | None = None, user_id: int | None = None) -> CredentialRefusal:
        self.credential_name, self.user_id = credential_name, user_id
        return self


class InvalidServiceCredential(CredentialRefusal):
    status_code = 401
    code = "invalid_service_credential"
    message = (
        "A valid service credential is required: HTTP Basic with the credential's name and les_ token, "
        "the form fields client_id and client_secret, or Authorization: Bearer les_..."
    )

    def __init__(self, message: str | None = None) -> None:
        """With the challenge RFC 6750 asks of a 401, and RFC 6749's ``error`` for OAuth clients."""
        super().__init__(message, headers={"WWW-Authenticate": CHALLENGE}, extra={"error": "invalid_client"})


class ServiceCredentialRequired(CredentialRefusal, PermissionDenied):
    code = "service_credential_required"
    message = "This endpoint is for the platform's services; a user's token is not accepted."


class InsufficientScope(CredentialRefusal, PermissionDenied):
    code = "insufficient_scope"


@dataclass(frozen=True, slots=True)
class PresentedSecret:
    """What a caller sent: a secret (``les_`` or an access token) and, with Basic or form fields, its name."""

    method: Literal["client_secret_basic", "client_secret_post", "bearer"]
    secret: str
    client_id: str | None = None


def _basic_credentials(value: str) -> PresentedSecret:
    """RFC 6749 section 2.3.1: ``client_id:client_secret``, each form-urlencoded, in base64."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidServiceCredential() from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise InvalidServiceCredential()
    return PresentedSecret(
        "client_secret_basic", urllib.parse.unquote_plus(secret), urllib.parse.unquote_plus(client_id)
    )


async def presented_secret(request: Request[Any, Any, Any]) -> PresentedSecret | None:
    """The credential of a request, by whichever of the three methods it came; None when there is none."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        return _basic_credentials(value)
    token = bearer_token(request)
    if token is not None:
        return PresentedSecret("bearer", token)
    if request.method == "POST" and request.headers.get("content-type", "").lower().startswith(FORM_MEDIA_TYPE):
        form = await request.form()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if isinstance(client_id, str) and isinstance(secret, str) and client_id and secret:
            return PresentedSecret("client_secret_post", secret, client_id)
    return None


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """The service a request came from."""

    name: str
    scopes: frozenset[str]
    client_ip: str | None = None
    credential_id: int | None = None  # when it came with the les_ secret: the credential's row

    def actor(self) -> Actor:
        return Actor(name=f"service:{self.name}", origin="service", client_ip=self.client_ip)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ServiceCredentialService(SQLAlchemyAsyncRepositoryService[ServiceCredential]):
    class Repo(SQLAlchemyAsyncRepository[ServiceCredential]):
        model_type = ServiceCredential

    repository_type = Repo

    async def issue(self, name: str, scopes: list[str]) -> tuple[ServiceCredential, str]:
        """A new credential; the token is returned here and nowhere else."""
        token = new_token()
        row = ServiceCredential(name=name, token_hash=token_digest(token), scopes=sorted(set(scopes)))
        try:
            row = await self.create(row, auto_commit=True)
        except IntegrityError as exc:
            raise Conflict(f"{name} already has a credential; revoke it first") from exc
        return row, token

    async def every_credential(self) -> list[ServiceCredential]:
        rows = await self.repository.session.scalars(
            select(ServiceCredential).order_by(ServiceCredential.name, ServiceCredential.created_at)
        )
        return list(rows)

    async def revoke(self, name: str) -> int:
        result = await self.repository.session.execute(
            update(ServiceCredential)
            .where(ServiceCredential.name == name, ServiceCredential.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        await self.repository.session.commit()
        return int(result.rowcount)

    async def authenticate(self, token: str) -> ServiceCredential | None:
        row = await self.find(token)
        return row if row is not None and row.revoked_at is None else None

    async def find(self, token: str) -> ServiceCredential | None:
        """The credential ``token`` is, revoked or not (a revoked one still names who is calling)."""
        if not TOKEN_PATTERN.match(token):
            return None
        return await self.get_one_or_none(ServiceCredential.token_hash == token_digest(token))


async def authenticate_client(
    request: Request[Any, Any, Any], state: State, db_session: AsyncSession, *, access_tokens: bool = True
) -> ServiceClient:
    """The calling service, by its ``les_`` secret (any method) or, when ``access_tokens``, a service token.

    401 without a credential or with a malformed, unknown, revoked or misnamed one; 403 for a user's
    token (signed in, but not a service).
    """
    presented = await presented_secret(request)
    if presented is None:
        raise InvalidServiceCredential()
    token = presented.secret
    if not token.startswith(TOKEN_PREFIX):
        if presented.method != "bearer":
            raise InvalidServiceCredential()
        return await _bearer_access_token(request, state, db_session, token, access_tokens=access_tokens)
    row = await ServiceCredentialService(session=db_session).find(token)
    if row is None:
        raise InvalidServiceCredential()
    # As bytes: compare_digest refuses str with non-ASCII characters, and a client id may have any.
    if presented.client_id is not None and not hmac.compare_digest(presented.client_id.encode(), row.name.encode()):
        raise InvalidServiceCredential().known(credential_name=row.name)
    if row.revoked_at is not None:
        raise InvalidServiceCredential().known(credential_name=row.name)
    return ServiceClient(row.name, frozenset(row.scopes), _client_ip(request, state), row.id)


async def _bearer_access_token(
    request: Request[Any, Any, Any], state: State, db_session: AsyncSession, token: str, *, access_tokens: bool
) -> ServiceClient:
    """A service's access token (its credential still live: revoking it ends its tokens at once), or refusal."""
    if is_opaque_refresh_token(token):  # a user's refresh token, sent where a service's belongs
        raise ServiceCredentialRequired()
    service = decode_service_token(state.keyring, state.settings, token)
    if service is not None:
        if not access_tokens:
            raise InvalidServiceCredential("Present the service credential itself, not an access token.")
        live_scopes = await scopes_of_issuer(db_session, service)
        if live_scopes is None:
            raise InvalidServiceCredential().known(credential_name=service.client_id)
        scopes = service.scopes & frozenset(live_scopes)
        return ServiceClient(service.client_id, scopes, _client_ip(request, state))
    for kind in ("access", "refresh"):
        try:
            claims = state.token_issuer.decode(token, kind)
        except InvalidToken:
            continue
        raise ServiceCredentialRequired().known(user_id=claims.user_id)
    raise InvalidServiceCredential()


async def scopes_of_issuer(db_session: AsyncSession, service: ServiceToken) -> list[str] | None:
    """The scopes of the credential that issued ``service``, while it is live; None once it is revoked.

    By the credential's id, not its name: a revoked name can be issued a new credential (the rotation
    after a leak), and the old credential's tokens must stay dead.
    """
    return await db_session.scalar(
        select(ServiceCredential.scopes).where(
            ServiceCredential.id == service.credential_id,
            ServiceCredential.name == service.client_id,
            ServiceCredential.revoked_at.is_(None),
        )
    )


def _client_ip(request: Request[Any, Any, Any], state: State) -> str | None:
    peer = request.scope.get("client")
    address = state.client_resolver.resolve(peer[0] if peer else None, request.scope["headers"])
    return str(address) if address is not None else None


def require_scope(scope: str) -> Callable[..., Awaitable[ServiceClient]]:
    """A dependency giving the calling service if its credential holds ``scope``.

    401 and 403 as :func:`authenticate_client`; 403 too for a credential without the scope.
    """
    assert scope in SCOPES, f"unknown scope {scope}"

    async def service_client(
        request: Request[Any, Any, Any], state: State, db_session: NamedDependency[AsyncSession]
    ) -> ServiceClient:
        client = await authenticate_client(request, state, db_session)
        if scope not in client.scopes:
            raise InsufficientScope(f"This credential does not have the scope {scope}.").known(
                credential_name=client.name
            )
        return client

    return service_client


async def record_service_query(
    db_session: AsyncSession, client: ServiceClient, action: Action, filters: dict[str, Any], row_count: int | None
) -> None:
    """Into the security team's query log, in the request's transaction (as a staff query is)."""
    connection = await db_session.connection()
    raw = await connection.get_raw_connection()
    await record_query(raw.driver_connection, client.actor(), action, filters, row_count)
