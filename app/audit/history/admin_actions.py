"""``GET /api/audit/admin-actions``: what support staff did to accounts, for the security team.

The rows are written by app/admin (one per action, in the action's transaction); this module only
reads them, with the history's machinery: text parameters through :class:`Params`, the keyset
cursor, the same limits, CSV (formula cells neutralised) or NDJSON export, and every read recorded
in ``audit_queries``. Role guard: ``auditor`` (security or admin), provided by the application.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar import Controller, Request, get
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.history.connections import AuditPool, read_transaction
from app.audit.history.controller import ACCOUNT_ID, ExportOperation, Format, Limit, StaffReader
from app.audit.history.cursor import Cursor, read_cursor
from app.audit.history.export import (
    EXPORT_FORMATS,
    MEDIA_TYPES,
    ExportCut,
    ExportFormat,
    ExportLimits,
    ExportSlot,
    neutralise_formula,
)
from app.audit.history.filters import iso, read_limit
from app.audit.history.params import Params
from app.audit.history.query_log import Actor, record_query
from app.core.errors import error_responses
from app.core.openapi import SIGNED_IN
from app.db.models import User

# Every action app/admin records: the one list, here because the security team reads them and this
# package never imports app/admin.
AdminActionName = Literal[
    "create",
    "activate",
    "deactivate",
    "change_role",
    "delete",
    "recovery",
    "unlock",
    "end_session",
    "reset_password_refused",
]
ACTIONS: tuple[str, ...] = get_args(AdminActionName)
COLUMNS = ("id", "created_at", "actor_user_id", "actor", "origin", "action", "target_user_id", "details", "client_ip")
AUDIT_ERRORS = error_responses(400, 401, 403, 429, 503)


class AdminActionView(msgspec.Struct, kw_only=True):
    id: int
    created_at: datetime.datetime
    actor_user_id: int | None
    actor: str
    origin: str
    action: str
    target_user_id: int | None
    details: dict[str, Any]
    client_ip: str | None


class AdminActionPage(msgspec.Struct, kw_only=True):
    items: list[AdminActionView]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AdminActionFilters:
    actor_user_id: int | None = None
    target_user_id: int | None = None
    actions: tuple[str, ...] | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for name in ("actor_user_id", "target_user_id"):
            if (value := getattr(self, name)) is not None:
                described[name] = value
        if self.actions:
            described["action"] = list(self.actions)
        for name in ("since", "until"):
            if (moment := getattr(self, name)) is not None:
                described[name] = iso(moment)
        return described

    def conditions(self, args: list[Any]) -> list[str]:
        conditions: list[str] = []

        def bind(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.actor_user_id is not None:
            conditions.append(f"actor_user_id = {bind(self.actor_user_id)}")
        if self.target_user_id is not None:
            conditions.append(f"target_user_id = {bind(self.target_user_id)}")
        if self.actions:
            conditions.append(f"action = ANY({bind(list(self.actions))}::text[])")
        if self.since is not None:
            conditions.append(f"created_at >= {bind(self.since)}")
        if self.until is not None:
            conditions.append(f"created_at < {bind(self.until)}")
        return conditions


@dataclass(frozen=True, slots=True)
class AdminActionRequest:
    filters: AdminActionFilters
    cursor: Cursor | None
    limit: int
    format: ExportFormat


def parse_admin_action_request(values: Mapping[str, str | None]) -> AdminActionRequest:
    params = Params(values)
    message = "Enter a user id (a positive whole number)."
    filters = AdminActionFilters(
        actor_user_id=params.whole_number("actor_user_id", message=message),
        target_user_id=params.whole_number("target_user_id", message=message),
        actions=params.choices("action", ACTIONS),
        since=params.timestamp("since"),
        until=params.timestamp("until"),
    )
    cursor = read_cursor(params)
    limit = read_limit(params)
    chosen = params.choice("format", EXPORT_FORMATS, "Choose csv or ndjson.")
    export_format: ExportFormat = "ndjson" if chosen == "ndjson" else "csv"
    params.raise_if_any()
    return AdminActionRequest(filters, cursor, limit, export_format)


SELECT = """SELECT id, created_at, actor_user_id, actor, origin, action, target_user_id, details::text AS details,
    host(client_ip) AS client_ip
FROM admin_actions"""


def _view(row: Any) -> AdminActionView:
    return AdminActionView(
        id=row["id"],
        created_at=row["created_at"],
        actor_user_id=row["actor_user_id"],
        actor=row["actor"],
        origin=row["origin"],
        action=row["action"],
        target_user_id=row["target_user_id"],
        details=msgspec.json.decode(row["details"]),
        client_ip=row["client_ip"],
    )


async def fetch_admin_actions(conn: Any, request: AdminActionRequest) -> AdminActionPage:
    """One page, newest first by (created_at, id)."""
    args: list[Any] = []
    conditions = request.filters.conditions(args)
    if request.cursor is not None:
        args += [request.cursor.created_at, request.cursor.i]
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(request.limit + 1)
    condition = " WHERE " + " AND ".join(conditions) if conditions else ""
    rows = await conn.fetch(f"{SELECT}{condition} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args)
    items = [_view(row) for row in rows[: request.limit]]
    next_cursor = None
    if len(rows) > request.limit:
        next_cursor = Cursor.after(items[-1].created_at, items[-1].id).encode()
    return AdminActionPage(items=items, next_cursor=next_cursor)


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


async def export_admin_actions(
    engine: AsyncEngine,
    filters: AdminActionFilters,
    fmt: ExportFormat,
    slot: ExportSlot | None = None,
    limits: ExportLimits | None = None,
) -> AsyncGenerator[bytes, None]:
    """Every matching action, newest first, from a server-side cursor (constant memory); holding
    ``slot`` (one of the login history's export slots, reserved by the caller) while it reads."""
    args: list[Any] = []
    conditions = filters.conditions(args)
    condition = " WHERE " + " AND ".join(conditions) if conditions else ""
    if fmt == "csv":
        yield _csv_line(list(COLUMNS)).encode()
    transaction = (
        (lambda: read_transaction(engine)) if slot is None else slot.connection(lambda: read_transaction(engine))
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.deadline_seconds if limits is not None else None
    async with transaction() as conn:
        if limits is not None:
            await conn.execute(f"SET LOCAL statement_timeout = {int(limits.deadline_seconds * 1000)}")
            await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {int(limits.idle_seconds * 1000)}")
        async for row in conn.cursor(f"{SELECT}{condition} ORDER BY created_at DESC, id DESC", *args):
            if deadline is not None and loop.time() > deadline:
                raise ExportCut("deadline")
            view = _view(row)
            if fmt == "ndjson":
                yield msgspec.json.encode(view) + b"\n"
                continue
            cells = [msgspec.to_builtins(getattr(view, name)) for name in COLUMNS]
            cells[COLUMNS.index("details")] = msgspec.json.encode(view.details).decode()
            texts = ["" if cell is None else neutralise_formula(str(cell)) for cell in cells]
            yield _csv_line(texts).encode()


def _query(description: str, schema: dict[str, Any] | None = None) -> Any:
    return QueryParameter(description=description, required=False, schema_extra=schema)


ActorId = Annotated[str | None, _query("Only actions of this staff account.", ACCOUNT_ID)]
TargetId = Annotated[str | None, _query("Only actions on this account.", ACCOUNT_ID)]
ActionText = Annotated[str | None, _query(f"One action, or several separated by commas: {', '.join(ACTIONS)}.")]
Since = Annotated[str | None, _query("ISO-8601 date or time, inclusive; UTC when it has no offset.")]
Until = Annotated[str | None, _query("ISO-8601 date or time, exclusive; UTC when it has no offset.")]
CursorText = Annotated[str | None, _query("next_cursor of the previous page.")]


def _actor(user: User, request: Request[Any, Any, Any], state: State) -> Actor:
    address = state.client_resolver.address_of(request.scope)
    name = user.phone_number or f"user {user.id}"
    return Actor(name, "api", user.id, str(address) if address is not None else None)


async def provide_admin_action_filters(
    actor_user_id: ActorId = None,
    target_user_id: TargetId = None,
    action: ActionText = None,
    since: Since = None,
    until: Until = None,
) -> dict[str, str | None]:
    """The filters the listing and the export share (checked by parse_admin_action_request)."""
    return {
        "actor_user_id": actor_user_id,
        "target_user_id": target_user_id,
        "action": action,
        "since": since,
        "until": until,
    }


class AdminActionsController(Controller):
    path = "/api/audit/admin-actions"
    tags = ["audit"]
    security = SIGNED_IN
    dependencies = {"admin_action_filters": Provide(provide_admin_action_filters)}

    @get("/", summary="Support staff's actions on accounts, newest first", responses=AUDIT_ERRORS)
    async def list_admin_actions(
        self,
        auditor: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        admin_action_filters: NamedDependency[dict[str, str | None]],
        cursor: CursorText = None,
        limit: Limit = None,
    ) -> AdminActionPage:
        page_request = parse_admin_action_request(
            {
                **admin_action_filters,
                "cursor": cursor,
                "limit": limit,
            }
        )
        audit_pool: AuditPool = state.audit_pool
        async with audit_pool.read(account=auditor.id) as conn:
            page = await fetch_admin_actions(conn, page_request)
            described = {**page_request.filters.describe(), "limit": page_request.limit}
            await record_query(conn, _actor(auditor, request, state), "admin_actions", described, len(page.items))
        return page

    @get(
        "/export",
        summary="Every matching admin action as CSV or NDJSON, streamed",
        response_description="text/csv (formula cells neutralised) or application/x-ndjson, newest first",
        responses=AUDIT_ERRORS,
        operation_class=ExportOperation,
        operation_id="exportAdminActions",
    )
    async def export(
        self,
        auditor: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        admin_action_filters: NamedDependency[dict[str, str | None]],
        format: Format = None,
    ) -> Stream:
        export_request = parse_admin_action_request(
            {
                **admin_action_filters,
                "format": format,
            }
        )
        slot = state.export_slots.reserve(auditor.id)  # before anything is sent: past the cap, the 429
        audit_pool: AuditPool = state.audit_pool
        try:
            async with audit_pool.record() as conn:
                described = {**export_request.filters.describe(), "format": export_request.format}
                await record_query(conn, _actor(auditor, request, state), "admin_actions_export", described)
        except BaseException:
            slot.release()
            raise
        body = export_admin_actions(
            audit_pool.engine,
            export_request.filters,
            export_request.format,
            slot,
            ExportLimits(state.settings.audit_export_deadline_seconds, state.settings.audit_export_idle_seconds),
        )

        async def close_body() -> None:
            await body.aclose()  # a client that hung up: the cursor and its connection go now
            slot.release_unclaimed()

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        return Stream(
            body,
            background=BackgroundTask(close_body),
            media_type=MEDIA_TYPES[export_request.format],
            headers={
                "Content-Disposition": f'attachment; filename="admin-actions-{stamp}.{export_request.format}"',
                "Cache-Control": "no-store",
            },
        )
