"""The record of who read the login history: one ``audit_queries`` row per query, export, summary or prune.

Written in the same transaction as the read it records, and committed before any row leaves the
service, so there is no way to read the history without leaving a trace. Admins list it through
``GET /api/audit/queries``.
"""

from __future__ import annotations

import datetime
import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from app.audit.history.cursor import Cursor, read_cursor
from app.audit.history.filters import read_limit
from app.audit.history.params import Params

if TYPE_CHECKING:
    from litestar import Request
    from litestar.datastructures import State

    from app.db.models import User

Origin = Literal["api", "cli", "service"]  # service: a platform service's credential (app/platform)
# grant_role: `users create-admin --promote` gave an account a staff role.
Action = Literal[
    "list",
    "export",
    "summary",
    "queries",
    "prune",
    "introspect",
    "user",
    "legacy_import",
    "grant_role",
    "admin_actions",
    "admin_actions_export",
]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking: an account (API) or an operator at a shell (CLI)."""

    name: str
    origin: Origin
    user_id: int | None = None
    client_ip: str | None = None

    @classmethod
    def of_account(cls, user_id: int, phone_number: str | None, address: object | None) -> Actor:
        """A signed-in account calling the API from ``address`` (its resolved client address)."""
        # Phone-less accounts cannot sign in; the fallback is for the types.
        return cls(phone_number or f"account {user_id}", "api", user_id, str(address) if address is not None else None)

    @classmethod
    def from_shell(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(name=f"{user}@{socket.gethostname()}"[:255], origin="cli")


def actor_of(user: User, request: Request[Any, Any, Any], state: State) -> Actor:
    """The signed-in staff account making ``request``, as the audit records name it (admin too)."""
    return Actor.of_account(user.id, user.phone_number, state.client_resolver.address_of(request.scope))


INSERT = """
INSERT INTO audit_queries (user_id, actor, origin, action, filters, row_count, client_ip)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::inet)
RETURNING id
"""


async def record_query(
    conn: Any, actor: Actor, action: Action, filters: Mapping[str, Any], row_count: int | None = None
) -> int:
    """Record one read of the history; returns the record's id (to fill ``row_count`` in later)."""
    record_id: int = await conn.fetchval(
        INSERT,
        actor.user_id,
        actor.name,
        actor.origin,
        action,
        msgspec.json.encode(dict(filters)).decode(),
        row_count,
        actor.client_ip,
    )
    return record_id


async def set_row_count(conn: Any, record_id: int, row_count: int) -> None:
    await conn.execute("UPDATE audit_queries SET row_count = $2 WHERE id = $1", record_id, row_count)


class AuditQueryView(msgspec.Struct, kw_only=True):
    id: int
    created_at: datetime.datetime
    user_id: int | None
    actor: str
    origin: str
    action: str
    filters: dict[str, Any]
    row_count: int | None
    client_ip: str | None


class AuditQueryPage(msgspec.Struct, kw_only=True):
    items: list[AuditQueryView]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueryLogRequest:
    user_id: int | None = None
    cursor: Cursor | None = None
    limit: int = 100


def parse_query_log_request(values: Mapping[str, str | None]) -> QueryLogRequest:
    params = Params(values)
    user_id = params.whole_number("user_id", message="Enter a user id (a positive whole number).")
    cursor = read_cursor(params)
    limit = read_limit(params)
    params.raise_if_any()
    return QueryLogRequest(user_id, cursor, limit)


async def fetch_query_log(conn: Any, request: QueryLogRequest) -> AuditQueryPage:
    """Recorded audit queries, newest first (the table is small: no index beyond the key)."""
    conditions: list[str] = []
    args: list[Any] = []
    if request.user_id is not None:
        args.append(request.user_id)
        conditions.append(f"user_id = ${len(args)}")
    if request.cursor is not None:
        args += [request.cursor.created_at, request.cursor.i]
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(request.limit + 1)
    condition = "WHERE " + " AND ".join(conditions) if conditions else ""
    sql = f"""SELECT id, created_at, user_id, actor, origin, action, filters::text AS filters, row_count,
    host(client_ip) AS client_ip
FROM audit_queries {condition}
ORDER BY created_at DESC, id DESC
LIMIT ${len(args)}"""  # noqa: S608 (values are parameters)
    rows = await conn.fetch(sql, *args)
    items = [
        AuditQueryView(
            id=row["id"],
            created_at=row["created_at"],
            user_id=row["user_id"],
            actor=row["actor"],
            origin=row["origin"],
            action=row["action"],
            filters=msgspec.json.decode(row["filters"]),
            row_count=row["row_count"],
            client_ip=row["client_ip"],
        )
        for row in rows[: request.limit]
    ]
    next_cursor = None
    if len(rows) > request.limit:
        next_cursor = Cursor.after(items[-1].created_at, items[-1].id).encode()
    return AuditQueryPage(items=items, next_cursor=next_cursor)
