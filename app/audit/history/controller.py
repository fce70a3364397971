"""The security team's API over the login history: pages, export, summary, and who looked.

Every route takes ``auditor`` (role security or admin) or ``admin``: 401 without a valid token, 403
for other roles. The application provides both dependencies (app/asgi.py registers the account
package's role checks), so this package never imports accounts. Every call is recorded in
``audit_queries`` in the same transaction as the read, committed before the answer is sent.
Parameters arrive as text and are checked by the same functions the CLI uses (app/audit/history/
filters.py and its neighbours), so a bad value is a 400 naming the field, in the same words as the CLI.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import QueryParameter, SkipValidation
from litestar.response import Stream

from app.audit.history.attempts import AttemptPage, fetch_page
from app.audit.history.connections import AuditPool, pooled_connection
from app.audit.history.export import (
    MEDIA_TYPES,
    ExportFormat,
    ExportLimits,
    ExportSlots,
    export_chunks,
    parse_export_request,
)
from app.audit.history.filters import MAX_LIMIT, parse_page_request
from app.audit.history.params import INT64_MAX
from app.audit.history.query_log import (
    Action,
    AuditQueryPage,
    actor_of,
    fetch_query_log,
    parse_query_log_request,
    record_query,
    set_row_count,
)
from app.audit.history.summary import MAX_TOP, Summary, parse_summary_request, summarise
from app.core.errors import error_responses
from app.core.openapi import SIGNED_IN, query_type
from app.db.models import User

# Bad filters, no token, another role, the account's read budget spent, a query that ran out of time.
AUDIT_ERRORS = error_responses(400, 401, 403, 429, 503)
EXPORT_ERRORS = error_responses(400, 401, 403, 429, 503)
EXPORT_DESCRIPTIONS: dict[ExportFormat, str] = {
    "csv": "A header line, then one attempt per line; formula cells start with a single quote.",
    "ndjson": "One JSON object per line, one per attempt.",
}

# How a handler names ``auditor`` or ``admin`` (app/accounts/guards.py): the staff member is a
# read-only snapshot with ``User``'s attributes, not a mapped ``User``, so Litestar does not validate it as one.
StaffReader = SkipValidation[NamedDependency[User]]


def _query(description: str, schema: dict[str, Any] | None = None) -> Any:
    return QueryParameter(description=description, required=False, schema_extra=schema)


# Query parameters, all text: the history's parsers check them and name the field of every problem. The
# document states the type each must have (query_type), as the parsers check it.
Phone = Annotated[str | None, _query("Any form of the number; normalised as at sign-in.")]
Ip = Annotated[str | None, _query("An address, or a network such as 41.186.0.0/16 or 2c0f:eb68::/32.")]
Success = Annotated[str | None, _query("true or false.", query_type(OpenAPIType.BOOLEAN))]
Reason = Annotated[str | None, _query("One reason, or several separated by commas.")]
Method = Annotated[str | None, _query("password or pin.", query_type(OpenAPIType.STRING, enum=["password", "pin"]))]
Channel = Annotated[str | None, _query("http (the login endpoint) or ussd (the USSD gateway).")]
ACCOUNT_ID = query_type(OpenAPIType.INTEGER, minimum=1, maximum=INT64_MAX)
UserId = Annotated[str | None, _query("The account's id.", ACCOUNT_ID)]
Since = Annotated[str | None, _query("ISO-8601 date or time, inclusive; UTC when it has no offset.")]
Until = Annotated[str | None, _query("ISO-8601 date or time, exclusive; UTC when it has no offset.")]
CursorText = Annotated[str | None, _query("next_cursor of the previous page.")]
Limit = Annotated[
    str | None,
    _query("Rows per page, 1 to 1,000 (default 100).", query_type(OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT)),
]
Format = Annotated[
    str | None, _query("csv (default) or ndjson.", query_type(OpenAPIType.STRING, enum=list(EXPORT_DESCRIPTIONS)))
]
SummarySince = Annotated[str | None, _query("ISO-8601, inclusive (default: 24 hours before until).")]
SummaryUntil = Annotated[str | None, _query("ISO-8601, exclusive (default: now).")]
BucketText = Annotated[
    str | None, _query("minute, hour (default) or day.", query_type(OpenAPIType.STRING, enum=["minute", "hour", "day"]))
]
Top = Annotated[
    str | None,
    _query(
        "Length of the top lists, 0 to 100 (default 10); 0 leaves them out, the only part that reads every row.",
        query_type(OpenAPIType.INTEGER, minimum=0, maximum=MAX_TOP),
    ),
]
AccountId = Annotated[str | None, _query("Only this account's queries.", ACCOUNT_ID)]


@dataclass
class ExportOperation(Operation):
    """The export's 200 as it is sent, CSV or NDJSON (Litestar documents one media type per response,
    application/json for a Stream)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                MEDIA_TYPES[fmt]: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=description))
                for fmt, description in EXPORT_DESCRIPTIONS.items()
            }


def _filter_params(**values: str | None) -> dict[str, str | None]:
    return values


async def provide_attempt_filters(
    phone_number: Phone = None,
    ip: Ip = None,
    success: Success = None,
    reason: Reason = None,
    auth_method: Method = None,
    channel: Channel = None,
    user_id: UserId = None,
) -> dict[str, str | None]:
    """The filters every listing, the export and the summary share (checked by filters.read_filters)."""
    return _filter_params(
        phone_number=phone_number,
        ip=ip,
        success=success,
        reason=reason,
        auth_method=auth_method,
        channel=channel,
        user_id=user_id,
    )


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]
    security = SIGNED_IN
    # ``auditor`` and ``admin`` come from the application (see the module docstring).
    dependencies = {"attempt_filters": Provide(provide_attempt_filters)}

    @get(
        "/login-attempts",
        summary="Login attempts, newest first, one page at a time",
        responses=AUDIT_ERRORS,
        operation_id="listLoginAttempts",
    )
    async def list_attempts(
        self,
        auditor: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        attempt_filters: NamedDependency[dict[str, str | None]],
        since: Since = None,
        until: Until = None,
        cursor: CursorText = None,
        limit: Limit = None,
    ) -> AttemptPage:
        params = _filter_params(
            **attempt_filters,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
        page_request = parse_page_request(params, state.settings.default_phone_region)
        actor = actor_of(auditor, request, state)
        audit_pool: AuditPool = state.audit_pool
        async with audit_pool.read(account=auditor.id) as conn:
            page = await fetch_page(conn, page_request)
            await record_query(conn, actor, "list", page_request.describe(), len(page.items))
        return page

    @get(
        "/login-attempts/export",
        summary="Every matching attempt as CSV or NDJSON, streamed",
        response_description="text/csv (formula cells neutralised) or application/x-ndjson, newest first",
        responses=EXPORT_ERRORS,
        operation_class=ExportOperation,
        operation_id="exportLoginAttempts",
    )
    async def export_attempts(
        self,
        auditor: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        attempt_filters: NamedDependency[dict[str, str | None]],
        since: Since = None,
        until: Until = None,
        format: Format = None,
    ) -> Stream:
        export_request = parse_export_request(
            _filter_params(**attempt_filters, since=since, until=until, format=format),
            state.settings.default_phone_region,
        )
        # Taken before anything is sent: past the cap (the account's own included) the answer is the
        # 429, never a transfer cut after its first bytes.
        slots: ExportSlots = state.export_slots
        slot = slots.reserve(auditor.id)
        try:
            actor = actor_of(auditor, request, state)
            audit_pool: AuditPool = state.audit_pool
            async with audit_pool.record() as conn:
                record_id = await record_query(conn, actor, "export", export_request.describe())
        except BaseException:
            slot.release()
            raise

        async def record_row_count(conn: Any, rows: int) -> None:
            await set_row_count(conn, record_id, rows)

        settings = state.settings
        body = export_chunks(
            slot.connection(lambda: pooled_connection(audit_pool.engine)),
            export_request.filters,
            export_request.format,
            finish=record_row_count,
            limits=ExportLimits(settings.audit_export_deadline_seconds, settings.audit_export_idle_seconds),
        )

        async def close_body() -> None:
            # A coroutine function of our own: Litestar takes ``body.aclose`` (a builtin method) for
            # a sync function, calls it and drops the awaitable, so nothing would close the body.
            await body.aclose()
            slot.release_unclaimed()  # a body that never started never took its connection

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        return Stream(
            body,
            # Litestar stops sending when the client hangs up but leaves the body open; closing it
            # stops the COPY and gives its connection and export slot back now, not at the next GC.
            background=BackgroundTask(close_body),
            media_type=MEDIA_TYPES[export_request.format],
            headers={
                "Content-Disposition": f'attachment; filename="login-attempts-{stamp}.{export_request.format}"',
                "Cache-Control": "no-store",
            },
        )

    @get(
        "/summary",
        summary="Outcomes per time bucket, top failing clients and numbers, PIN locks",
        responses=AUDIT_ERRORS,
        operation_id="summariseLoginAttempts",
    )
    async def summary(
        self,
        auditor: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        attempt_filters: NamedDependency[dict[str, str | None]],
        since: SummarySince = None,
        until: SummaryUntil = None,
        bucket: BucketText = None,
        top: Top = None,
    ) -> Summary:
        params = _filter_params(
            **attempt_filters,
            since=since,
            until=until,
            bucket=bucket,
            top=top,
        )
        summary_request = parse_summary_request(params, state.settings.default_phone_region)
        actor = actor_of(auditor, request, state)
        audit_pool: AuditPool = state.audit_pool
        async with audit_pool.read(snapshot=True, account=auditor.id) as conn:
            result = await summarise(conn, summary_request, ipv6_prefix=state.settings.rate_limit_ipv6_prefix)
            await record_query(conn, actor, "summary", summary_request.describe(), result.totals.attempts)
        return result

    @get(
        "/queries",
        summary="Who read the login history, newest first (admins only)",
        responses=AUDIT_ERRORS,
        operation_id="listAuditQueries",
    )
    async def audit_queries(
        self,
        admin: StaffReader,
        request: Request[Any, Any, Any],
        state: State,
        user_id: AccountId = None,
        cursor: CursorText = None,
        limit: Limit = None,
    ) -> AuditQueryPage:
        log_request = parse_query_log_request({"user_id": user_id, "cursor": cursor, "limit": limit})
        action: Action = "queries"
        audit_pool: AuditPool = state.audit_pool
        async with audit_pool.read(account=admin.id) as conn:
            page = await fetch_query_log(conn, log_request)
            described: dict[str, Any] = {"limit": log_request.limit}
            if log_request.user_id is not None:
                described["user_id"] = log_request.user_id
            await record_query(conn, actor_of(admin, request, state), action, described, len(page.items))
        return page
