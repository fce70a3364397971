"""Service credentials: bearer tokens for the platform's services, and the guard that checks them.

A credential is ``les_`` + 32 random bytes (base64url), shown once by ``ladys-essence services
create``; only its SHA-256 is stored (a 256-bit random token needs no slow hash). The prefix lets a
guard tell it from a user's JWT without a database read, and lets secret scanners spot a leaked one.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
from app.sessions.deps import bearer_token
from app.sessions.tokens import is_opaque_refresh_token

TOKEN_PREFIX = "les_"  # noqa: S105 (a prefix, not a secret)
TOKEN_PATTERN = re.compile(r"les_[A-Za-z0-9_-]{43}\Z")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")


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
    message = "A valid service credential is required (Authorization: Bearer les_...)."


class ServiceCredentialRequired(CredentialRefusal, PermissionDenied):
    code = "service_credential_required"
    message = "This endpoint is for the platform's services; a user's token is not accepted."


class InsufficientScope(CredentialRefusal, PermissionDenied):
    code = "insufficient_scope"


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """The service a request came from."""

    name: str
    scopes: frozenset[str]
    client_ip: str | None = None

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


def require_scope(scope: str) -> Callable[..., Awaitable[ServiceClient]]:
    """A dependency giving the calling service if its credential holds ``scope``.

    401 without a credential or with a malformed, unknown or revoked one; 403 for a user's token
    (signed in, but not a service) and for a credential without the scope.
    """
    assert scope in SCOPES, f"unknown scope {scope}"

    async def service_client(
        request: Request[Any, Any, Any], state: State, db_session: NamedDependency[AsyncSession]
    ) -> ServiceClient:
        token = bearer_token(request)
        if token is None:
            raise InvalidServiceCredential()
        if not token.startswith(TOKEN_PREFIX):
            if is_opaque_refresh_token(token):  # a user's refresh token, sent where a service's belongs
                raise ServiceCredentialRequired()
            for kind in ("access", "refresh"):
                try:
                    claims = state.token_issuer.decode(token, kind)
                except InvalidToken:
                    continue
                raise ServiceCredentialRequired().known(user_id=claims.user_id)
            raise InvalidServiceCredential()
        row = await ServiceCredentialService(session=db_session).find(token)
        if row is None:
            raise InvalidServiceCredential()
        if row.revoked_at is not None:
            raise InvalidServiceCredential().known(credential_name=row.name)
        if scope not in row.scopes:
            raise InsufficientScope(f"This credential does not have the scope {scope}.").known(credential_name=row.name)
        peer = request.scope.get("client")
        address = state.client_resolver.resolve(peer[0] if peer else None, request.scope["headers"])
        return ServiceClient(row.name, frozenset(row.scopes), str(address) if address is not None else None)

    return service_client


async def record_service_query(
    db_session: AsyncSession, client: ServiceClient, action: Action, filters: dict[str, Any], row_count: int | None
) -> None:
    """Into the security team's query log, in the request's transaction (as a staff query is)."""
    connection = await db_session.connection()
    raw = await connection.get_raw_connection()
    await record_query(raw.driver_connection, client.actor(), action, filters, row_count)
